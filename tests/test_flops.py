"""tools/get_flops.py: MAC / parameter counts against the paper and a closed-form count."""
import importlib.util
import math
from pathlib import Path

import pytest

from mmef.models import EfficientFormer

_spec = importlib.util.spec_from_file_location(
    'get_flops', Path(__file__).resolve().parents[1] / 'tools' / 'get_flops.py')
get_flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(get_flops)


def closed_form_macs(arch, h, w):
    """Backbone MACs written out by hand from the architecture (no hooks)."""
    a = EfficientFormer.parse_arch(arch)
    widths, depths, n_attn = a['widths'], a['depths'], a['num_attn_blocks']
    half = lambda v: math.ceil(v / 2)  # noqa: E731  (conv k3 s2 p1)
    h, w = half(h), half(w)
    macs = h * w * (widths[0] // 2) * 3 * 9
    h, w = half(h), half(w)
    macs += h * w * widths[0] * (widths[0] // 2) * 9
    for i, (c, d) in enumerate(zip(widths, depths)):
        if i > 0:
            h, w = half(h), half(w)
            macs += h * w * c * widths[i - 1] * 9
        n3d = n_attn if i == 3 else 0
        n = h * w
        macs += (d - n3d) * 2 * n * c * 4 * c  # MB4D: two 1x1 convs
        # MB3D: qkv (8 heads x (32 + 32 + 128)), proj (1024 -> C), MLP, q k^T and attn v
        macs += n3d * (n * c * 1536 + n * 1024 * c + 2 * n * c * 4 * c + 8 * n * n * (32 + 128))
    return macs


@pytest.mark.parametrize('arch,size', [('l1', (224, 224)), ('l3', (160, 288)),
                                       ('l1', (130, 70))])
def test_counts_match_closed_form(arch, size):
    params, macs = get_flops.measure(arch, size)
    assert macs['total'] == closed_form_macs(arch, *size)
    assert macs['attention matmul'] > 0


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_paper_numbers_at_224(arch):
    params, macs = get_flops.measure(arch, (224, 224), classifier=True)
    paper_macs, paper_params = get_flops.PAPER[arch]
    assert abs(params / paper_params - 1) < 0.01
    if arch == 'l3':
        # The paper's 3.74G for L3 is 0.17G (the cost of one MB3D block at 7x7) below what its own
        # architecture, whose 31.4M parameters we match, computes: 3.907G; timm's independent
        # count of the same model is 3.9G. We check against that and keep the gap explicit.
        assert abs(macs['total'] / 3.9e9 - 1) < 0.03
        assert 0.04 < macs['total'] / paper_macs - 1 < 0.05
    else:
        assert abs(macs['total'] / paper_macs - 1) < 0.03


def test_deploy_keeps_macs_and_drops_bn_params():
    params, macs = get_flops.measure('l1', (224, 224))
    params_d, macs_d = get_flops.measure('l1', (224, 224), deploy=True)
    assert macs_d['total'] == macs['total']
    assert params_d < params


def test_cli_prints_table(capsys):
    get_flops.main(['--arch', 'l1', '--size', '224', '224', '--classifier'])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith('| arch |'))
    row = next(line for line in out.splitlines() if line.startswith('| l1 |'))
    cells = dict(zip([c.strip() for c in header.strip('|').split('|')],
                     [c.strip() for c in row.strip('|').split('|')]))
    params, macs = get_flops.measure('l1', (224, 224), classifier=True)
    assert float(cells['params (M)']) == pytest.approx(params / 1e6, abs=0.005)
    assert float(cells['GMACs']) == pytest.approx(macs['total'] / 1e9, abs=0.0005)
    assert float(cells['paper GMACs']) == 1.30
    assert float(cells['diff'].rstrip('%')) == pytest.approx(
        100 * (macs['total'] / 1.30e9 - 1), abs=0.05)


@pytest.mark.parametrize('arch', ['v2-s0', 'v2-s1', 'v2-s2', 'v2-l'])
def test_v2_paper_numbers_at_224(arch):
    """EfficientFormerV2 with its classifier at 224: GMACs within 3 % of the paper (measured
    -1.0 / +0.3 / -0.3 / -0.3 %); parameters within 3 % of the paper's rounded 3.5 / 6.1 /
    12.6 / 26.1 M (timm counts the same models as 3.6 / 6.2 / 12.7 / 26.3 M)."""
    params, macs = get_flops.measure(arch, (224, 224), classifier=True)
    paper_macs, paper_params = get_flops.PAPER[arch]
    assert abs(macs['total'] / paper_macs - 1) < 0.03
    assert abs(params / paper_params - 1) < 0.03
    assert macs['attention matmul'] > 0 and macs['conv'] > 0.9 * macs['total']
