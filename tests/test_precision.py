"""Reduced precision: unfused and deployed backbones (V1 and V2) under bf16 autocast and with bf16
weights, against fp32. Tolerance: 5e-2 of the output's largest magnitude (bf16 keeps 8 bits of
mantissa; measured 0.6-1.5e-2 here), which a wrong dtype path (e.g. a bias or layer scale applied
twice or dropped) exceeds by far."""
import copy

import pytest
import torch

from mmef.deploy import switch_to_deploy
from mmef.models import EfficientFormer, EfficientFormerV2
from weights import randomize

TOL = 5e-2
MODELS = {'l1': lambda: EfficientFormer('l1'), 'v2-s0': lambda: EfficientFormerV2('s0')}


def rel(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def _pair(name, deployed):
    model = randomize(MODELS[name](), seed=5).eval()
    fp32 = copy.deepcopy(model)
    if deployed:
        switch_to_deploy(model)
    return fp32, model


@pytest.mark.parametrize('deployed', [False, True], ids=['unfused', 'deployed'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_bf16_autocast(name, deployed):
    fp32, model = _pair(name, deployed)
    for size in [(160, 224), (224, 160)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            refs = fp32(x)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                outs = model(x)
        for out, ref in zip(outs, refs):
            assert torch.isfinite(out).all()
            assert rel(out, ref) <= TOL, (size, rel(out, ref))


@pytest.mark.parametrize('deployed', [False, True], ids=['unfused', 'deployed'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_bf16_weights(name, deployed):
    fp32, model = _pair(name, deployed)
    model.to(torch.bfloat16)
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        refs = fp32(x)
        outs = model(x.bfloat16())
    for out, ref in zip(outs, refs):
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert rel(out, ref) <= TOL, rel(out, ref)
