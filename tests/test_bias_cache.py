"""The attention-bias caches are keyed by the grid, not by its token count: an eval model that
has seen one grid gives, at the transposed grid (same number of tokens), what a fresh model
gives there. Relative mode (the bias depends on the grid's shape), V1 and V2, unfused and
deployed."""
import copy

import pytest
import torch

from mmef.deploy import switch_to_deploy
from mmef.models import EfficientFormer, EfficientFormerV2
from weights import randomize


def _build(cls, arch, deployed):
    """Two copies of one model with random weights (one to use, one fresh)."""
    model = randomize(cls(arch), seed=3).eval()
    if deployed:
        switch_to_deploy(model)
    return model, copy.deepcopy(model)


@pytest.mark.parametrize('deployed', [False, True], ids=['unfused', 'deployed'])
@pytest.mark.parametrize('cls, arch', [(EfficientFormer, 'l1'), (EfficientFormerV2, 's0')])
def test_transposed_grid_gets_its_own_bias(cls, arch, deployed):
    # last-stage grids 3x4 and 4x3 (V2 also 3x4 / 4x3 in its strided stage-3 attention and a
    # 6x8 / 8x6 key grid in its downsampling attention): same token counts, other offsets
    size, transposed = (96, 128), (128, 96)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *size, generator=g)
    y = torch.randn(1, 3, *transposed, generator=g)
    used, fresh = _build(cls, arch, deployed)
    with torch.no_grad():
        used(x)
        got = used(y)
        want = fresh(y)
    assert got[-1].shape[-2:] == (4, 3)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max()
    # what makes the check bite: the two grids' biases (same shape) differ
    attn = next(m for m in _build(cls, arch, False)[1].modules() if hasattr(m, 'attn_bias'))
    a, b = attn.attn_bias((3, 4)), attn.attn_bias((4, 3))
    assert a.shape == b.shape and (a - b).abs().max() > 0.1
