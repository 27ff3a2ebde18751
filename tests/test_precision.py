"""Reduced precision: unfused and deployed backbones (V1 and V2) under bf16 and fp16 autocast and
with bf16 and fp16 weights (``model.to(dtype)``), against fp32, on the CPU (torch has CPU kernels
for both). Tolerance, of the output's largest magnitude: 5e-2 for bf16 (8 bits of mantissa;
measured 0.6-1.5e-2 here), 1e-2 for fp16 (11 bits; measured 0.9-2.5e-3), which a wrong dtype path
(e.g. a bias or layer scale applied twice or dropped) exceeds by far."""
import copy

import pytest
import torch

from mmef.deploy import switch_to_deploy
from mmef.models import EfficientFormer, EfficientFormerV2
from weights import randomize

TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
DTYPES = pytest.mark.parametrize('dtype', sorted(TOL, key=str), ids=lambda d: str(d)[6:])
MODELS = {'l1': lambda: EfficientFormer('l1'), 'v2-s0': lambda: EfficientFormerV2('s0')}


def rel(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def _pair(name, deployed):
    model = randomize(MODELS[name](), seed=5).eval()
    fp32 = copy.deepcopy(model)
    if deployed:
        switch_to_deploy(model)
    return fp32, model


@DTYPES
@pytest.mark.parametrize('deployed', [False, True], ids=['unfused', 'deployed'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_autocast(name, deployed, dtype):
    fp32, model = _pair(name, deployed)
    for size in [(160, 224), (224, 160)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            refs = fp32(x)
            with torch.autocast('cpu', dtype=dtype):
                outs = model(x)
        for out, ref in zip(outs, refs):
            assert torch.isfinite(out).all()
            assert rel(out, ref) <= TOL[dtype], (size, rel(out, ref))


@DTYPES
@pytest.mark.parametrize('deployed', [False, True], ids=['unfused', 'deployed'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_reduced_weights(name, deployed, dtype):
    fp32, model = _pair(name, deployed)
    model.to(dtype)
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        refs = fp32(x)
        outs = model(x.to(dtype))
    for out, ref in zip(outs, refs):
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel(out, ref) <= TOL[dtype], rel(out, ref)
