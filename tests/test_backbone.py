"""EfficientFormer backbone: shapes, parameter counts, knobs, bias modes, numerics (pure torch)."""
import math

import pytest
import torch
import torch.nn as nn

from mmef.models import EfficientFormer, EfficientFormerV2
from mmef.models.attention import Attention, offset_index, relative_bias
from weights import randomize

WIDTHS = {'l1': (48, 96, 224, 448), 'l3': (64, 128, 320, 512), 'l7': (96, 192, 384, 768)}
PAPER_PARAMS_M = {'l1': 12.3, 'l3': 31.4, 'l7': 82.2}


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
@pytest.mark.parametrize('size', [(224, 320), (250, 330)])
def test_output_shapes_and_strides(arch, size):
    model = EfficientFormer(arch).eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.rand(1, 3, h, w))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 2**(i + 2)
        assert tuple(out.shape) == (1, WIDTHS[arch][i], math.ceil(h / stride),
                                    math.ceil(w / stride))


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_param_counts_match_paper(arch):
    model = EfficientFormer(arch)
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('norm'))
    c = WIDTHS[arch][-1]
    # classification-equivalent: + final LayerNorm, head and distillation head (1000 classes)
    classifier = 2 * c + 2 * (c * 1000 + 1000)
    total_m = (backbone + classifier) / 1e6
    assert abs(total_m - PAPER_PARAMS_M[arch]) / PAPER_PARAMS_M[arch] < 0.01, total_m


def test_odd_sizes_batches_and_out_indices():
    model = EfficientFormer('l1', out_indices=(-1, 1)).eval()
    assert model.out_indices == (1, 3)
    with torch.no_grad():
        outs = model(torch.rand(3, 3, 97, 61))
    assert [tuple(o.shape) for o in outs] == [(3, 96, 13, 8), (3, 448, 4, 2)]
    assert not hasattr(model, 'norm0')


def test_out_indices_argument_not_mutated():
    indices = [-1, 0]
    model = EfficientFormer('l1', out_indices=indices)
    assert indices == [-1, 0]
    assert model.out_indices == (0, 3)


def test_batch_items_are_independent():
    """Each image's features do not depend on the rest of the batch (no cross-batch leakage)."""
    model = randomize(EfficientFormer('l1')).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    for a, b in zip(both, first):
        torch.testing.assert_close(a[:1], b, rtol=1e-4, atol=1e-4)


def test_outputs_are_group_normalised():
    """Each output map is GroupNorm(1, C)-ed: with the initial affine, zero mean and unit
    variance per sample (a missing output norm would leave the raw stage statistics)."""
    model = randomize(EfficientFormer('l1')).eval()
    for i in range(4):
        norm = getattr(model, f'norm{i}')
        nn.init.ones_(norm.weight)
        nn.init.zeros_(norm.bias)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 96, 160) * 3 + 1)
    for out in outs:
        flat = out.flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(2), rtol=0, atol=1e-4)
        torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(2), rtol=0, atol=1e-3)


@pytest.mark.parametrize('build', [lambda: EfficientFormer('l1'), lambda: EfficientFormerV2('s0')],
                         ids=['v1', 'v2'])
def test_channels_last_input_matches(build):
    """Same values, and contiguous NCHW maps out (mmcv's CPU RoIAlign reads raw memory as NCHW),
    for channels_last inputs and for a model converted to channels_last."""
    model = randomize(build()).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last))
        out_cl = model.to(memory_format=torch.channels_last)(x)
    for a, b, c in zip(ref, out, out_cl):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
        assert b.is_contiguous() and c.is_contiguous()


def test_bf16_autocast_is_finite_and_close():
    model = randomize(EfficientFormer('l1')).eval()
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    for a, b in zip(ref, out):
        assert torch.isfinite(b).all()
        # outputs are GroupNorm-ed, O(1): bf16 keeps ~2-3 significant digits
        assert (a - b.float()).abs().mean() < 0.1


def test_single_flatten_and_no_reshape_inside_blocks():
    """Tokens enter the MB3D blocks as (B, N, C) and every MB4D block sees an NCHW map."""
    model = EfficientFormer('l3').eval()
    seen = []
    for stage in model.stages:
        for blk in stage.blocks:
            blk.register_forward_hook(lambda m, i, o: seen.append(('4d', i[0].dim(), o.dim())))
        for blk in stage.attn_blocks:
            blk.register_forward_hook(lambda m, i, o: seen.append(('3d', i[0].dim(), o.dim())))
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 96))
    assert seen.count(('4d', 4, 4)) == 4 + 4 + 12 + 2
    assert seen.count(('3d', 3, 3)) == 4
    assert len(seen) == 26


# ---- relative attention bias ---------------------------------------------------------------

def test_relative_bias_equals_table_at_7x7():
    table = torch.randn(8, 49)
    bias = relative_bias(table, 7, (7, 7))
    # plain indexing of the table by |dy| * 7 + |dx|, as the original ImageNet model does
    for (i, j) in [(0, 0), (0, 48), (10, 3), (24, 40), (48, 6)]:
        dy, dx = abs(i // 7 - j // 7), abs(i % 7 - j % 7)
        torch.testing.assert_close(bias[:, i, j], table[:, dy * 7 + dx], rtol=0, atol=0)
    torch.testing.assert_close(bias, table[:, offset_index((7, 7))], rtol=0, atol=0)


def test_relative_bias_translation_invariant_on_9x13():
    table = torch.randn(8, 49)
    h, w = 9, 13
    bias = relative_bias(table, 7, (h, w))
    assert bias.shape == (8, h * w, h * w)
    # shifting both tokens of every pair by one row or one column leaves the bias unchanged
    grid = bias.view(8, h, w, h, w)
    torch.testing.assert_close(grid[:, 1:, :, 1:, :], grid[:, :-1, :, :-1, :], rtol=0, atol=0)
    torch.testing.assert_close(grid[:, :, 1:, :, 1:], grid[:, :, :-1, :, :-1], rtol=0, atol=0)
    # and the bias is symmetric under reflection of the offset (|dy|, |dx|)
    torch.testing.assert_close(bias, bias.transpose(1, 2))
    # different offsets generally get different biases (the table is not collapsed)
    assert not torch.allclose(bias[:, 0, 1], bias[:, 0, 2])


def test_bias_cached_in_eval_recomputed_in_training():
    attn = Attention(64)
    with torch.no_grad():
        attn.bias_table.normal_()
    attn.eval()
    first = attn.attn_bias((9, 13))
    assert attn.attn_bias((9, 13)) is first  # computed once per grid size in eval
    assert not first.requires_grad
    half = attn.attn_bias((9, 13), dtype=torch.bfloat16)  # and once per dtype (bf16 inference)
    assert half.dtype == torch.bfloat16 and torch.equal(half, first.to(torch.bfloat16))
    assert attn.attn_bias((9, 13), dtype=torch.bfloat16) is half
    with torch.no_grad():  # an in-place change in eval mode is not seen (documented)
        attn.bias_table.add_(1.)
    assert torch.equal(attn.attn_bias((9, 13)), first)
    attn.train()  # training: recomputed every call, differentiable
    trained = attn.attn_bias((9, 13))
    assert trained.requires_grad and attn.attn_bias((9, 13)) is not trained
    torch.testing.assert_close(trained.detach(), first + 1)  # bicubic weights sum to 1
    attn.eval()  # back in eval: the cache was dropped by train()
    again = attn.attn_bias((9, 13))
    assert again is not first
    torch.testing.assert_close(again, first + 1)


def test_bias_cache_dropped_when_weights_load():
    attn = Attention(64).eval()
    x = torch.randn(1, 20, 64)
    with torch.no_grad():
        before = attn(x, (4, 5))
        state = attn.state_dict()
        state['bias_table'] = torch.randn_like(state['bias_table']) * 3
        attn.load_state_dict(state)
        after = attn(x, (4, 5))
    assert not torch.allclose(before, after)


def test_gradients_reach_bias_table():
    model = randomize(EfficientFormer('l1')).train()
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    grad = model.stages[3].attn_blocks[0].attn.bias_table.grad
    assert grad is not None and grad.abs().sum() > 0


def test_official_mode_equals_relative_on_native_grid():
    """Both bias arithmetics agree when the token grid is exactly R x R (here 7x7 at 224)."""
    rel = randomize(EfficientFormer('l1', attn_bias_mode='relative')).eval()
    off = EfficientFormer('l1', attn_bias_mode='official').eval()
    off.load_state_dict(rel.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(rel(x), off(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # on another grid they differ: the pair-matrix resize scrambles offsets
        y = torch.randn(1, 3, 256, 320)
        assert not torch.allclose(rel(y)[3], off(y)[3], atol=1e-3)


def test_relative_table_of_other_resolution():
    model = EfficientFormer('l1', attn_bias_resolution=16).eval()
    assert model.stages[3].attn_blocks[0].attn.bias_table.shape == (8, 256)
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 250, 330))
    assert outs[3].shape == (1, 448, 8, 11)


# ---- training knobs ------------------------------------------------------------------------

def test_frozen_stages_stay_frozen_after_train():
    model = EfficientFormer('l1', frozen_stages=2).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    for i in range(4):
        stage = model.stages[i]
        assert all(p.requires_grad == (i >= 2) for p in stage.parameters())
        assert stage.training == (i >= 2)
        norm = getattr(model, f'norm{i}')
        assert norm.training == (i >= 2)
        assert all(p.requires_grad == (i >= 2) for p in norm.parameters())
    assert not model.stem.training and not model.stem.conv1.bn.training
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert model.stem.conv1.conv.weight.grad is None
    assert model.stages[2].blocks[0].mlp.fc1.conv.weight.grad is not None


def test_frozen_stem_only():
    model = EfficientFormer('l1', frozen_stages=0).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())


def test_norm_eval_keeps_bn_in_eval_mode():
    model = EfficientFormer('l1', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.stages[3].attn_blocks[0].training  # other layers still train
    stats = model.stem.conv1.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.stem.conv1.bn.running_mean, stats)
    plain = EfficientFormer('l1').train()
    assert all(m.training for m in plain.modules() if isinstance(m, nn.BatchNorm2d))


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    ref = randomize(EfficientFormer('l1')).train()
    cp = EfficientFormer('l1', with_cp=True).train()
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 64)
    for model in (ref, cp):
        sum(o.square().sum() for o in model(x)).backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), cp.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_drop_path_rates_grow_linearly():
    model = EfficientFormer('l1', drop_path_rate=0.3)
    rates = [b.drop_path.p for s in model.stages for b in list(s.blocks) + list(s.attn_blocks)]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_custom_arch_dict():
    model = EfficientFormer(dict(widths=[16, 32, 48, 64], depths=[1, 1, 2, 2],
                                 num_attn_blocks=2)).eval()
    assert len(model.stages[3].blocks) == 0 and len(model.stages[3].attn_blocks) == 2
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 48, 64]


def test_no_attention_blocks_is_pure_4d():
    model = EfficientFormer(dict(widths=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                 num_attn_blocks=0)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))[3].shape == (1, 64, 2, 2)


# ---- constructor errors ----------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, fragment', [
    (dict(arch='l2'), "valid choices: ['l1', 'l3', 'l7']"),
    (dict(arch=dict(widths=[8, 16, 32, 64], depths=[1, 1, 1, 1])), "missing keys: ['num_attn_blocks']"),
    (dict(arch=dict(widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attn_blocks=1, mlp=4)),
     "unknown keys: ['mlp']"),
    (dict(arch=dict(widths=[8, 16, 32], depths=[1, 1, 1], num_attn_blocks=1)),
     "arch['widths'] must be 4 positive ints"),
    (dict(arch=dict(widths=[8, 16, 32, 64], depths=[1, 1, 1, 2], num_attn_blocks=3)),
     'num_attn_blocks"] must be an int in [0, depths[-1]=2]'),
    (dict(arch=3), 'arch must be one of'),
    (dict(out_indices=(0, 4)), 'out_indices entries must be ints in [-4, 3]'),
    (dict(out_indices=(1, -3)), 'duplicate stages'),
    (dict(out_indices=()), 'at least one stage'),
    (dict(frozen_stages=5), 'frozen_stages must be an int in [-1, 4]'),
    (dict(frozen_stages=-2), 'frozen_stages must be an int in [-1, 4]'),
    (dict(attn_bias_mode='abs'), "attn_bias_mode must be one of ('relative', 'official')"),
    (dict(drop_path_rate=-0.1), 'drop_path_rate must be in [0, 1)'),
    (dict(attn_bias_resolution=0), 'attn_bias_resolution must be a positive int'),
])
def test_constructor_errors(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        EfficientFormer(**kwargs)
    assert fragment in str(err.value)


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match='out_indice'):
        EfficientFormer(out_indice=(0, 1))
