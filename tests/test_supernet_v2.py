"""EfficientFormerV2Supernet: sub-networks computed with the supernet's tensors (fix and extract
agree with each other and with an EfficientFormerV2 loaded from slices this test takes itself,
and a hand-written forward for depth and attention), the sampled archs of the sandwich rule,
initialisation from an EfficientFormerV2 file and the errors of invalid sub-networks; and that
these checks catch broken inheritance (trailing channels, a block from the wrong position, the
MLP's hidden channels from the wrong end). Weights are random and non-trivial."""
import random

import pytest
import torch

import mmef  # noqa: F401
import mmef.models.supernet as supernet_module
from mmef.models import EfficientFormerV2, EfficientFormerV2Supernet
from weights import randomize

S1 = EfficientFormerV2.arch_settings['s1']
# a sub-network of the S1-shaped supernet: narrower everywhere, fewer blocks, one attention block
SUB = dict(widths=(24, 40, 80, 160), depths=(2, 3, 5, 4), num_attn_blocks=1,
           mlp_ratios=((4, 3), (3, 4, 4), (4, 3, 3, 2, 4), (3, 4, 3, 4)))
# which supernet block each SUB block is, written out: the first d - n blocks, then the last n
SUB_SOURCES = [(0, 1), (0, 1, 2), (0, 1, 2, 3, 8), (0, 1, 2, 5)]


def _supernet(arch='s1', seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize(EfficientFormerV2Supernet(arch, **kwargs), seed=seed).eval()


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _max_rel(outs, refs):
    assert [o.shape for o in outs] == [r.shape for r in refs]
    return max(_rel(o, r) for o, r in zip(outs, refs))


def _reference(net, arch, sources):
    """An EfficientFormerV2 of ``arch`` loaded (strictly) with the first entries of the
    supernet's tensors in every dimension, block k of stage i from supernet block
    ``sources[i][k]`` (an FFN block at an attention block's position: its mlp / ls2)."""
    ref = EfficientFormerV2(arch)
    own = net.state_dict()
    state = {}
    for key, value in ref.state_dict().items():
        parts = key.split('.')
        if parts[0] == 'stages' and parts[2] == 'blocks':
            parts[3] = str(sources[int(parts[1])][int(parts[3])])
        source = own['.'.join(parts)]
        state[key] = source[tuple(slice(0, n) for n in value.shape)].clone()
    ref.load_state_dict(state, strict=True)
    return ref.train(net.training)


def test_registered_and_unfixed_is_the_whole_backbone():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for registry in (DET, SEG):
        net = registry.build(dict(type='EfficientFormerV2Supernet', arch='s0', out_indices=(1, 3)))
        assert isinstance(net, EfficientFormerV2Supernet)
    net = _supernet()
    plain = EfficientFormerV2('s1').eval()
    plain.load_state_dict(net.state_dict(), strict=True)  # the same keys and shapes
    x = torch.randn(1, 3, 70, 130)
    assert _max_rel(net(x), plain(x)) == 0
    assert net.largest_arch() == EfficientFormerV2.parse_arch('s1')


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_fix_and_extract_agree_with_independent_slices(mode):
    net = _supernet(seed=1)
    sub = net.extract(SUB)
    assert isinstance(sub, EfficientFormerV2) and sub.arch == EfficientFormerV2.parse_arch(SUB)
    EfficientFormerV2(SUB).load_state_dict(sub.state_dict(), strict=True)
    ref = _reference(net, SUB, SUB_SOURCES)
    # hidden channels: the first int(w * r) of the source block, e.g. stage 3 block 4 (ratio 2)
    assert torch.equal(sub.stages[2].blocks[3].mlp.fc1.conv.weight,
                       net.stages[2].blocks[3].mlp.fc1.conv.weight[:160, :80])
    # the attention block is the supernet's last (block 9 of stage 3)
    assert torch.equal(sub.stages[2].blocks[4].attn.v.conv.weight,
                       net.stages[2].blocks[8].attn.v.conv.weight[:, :80])
    net.fix(SUB)
    assert net.fixed_arch == EfficientFormerV2.parse_arch(SUB)
    if mode == 'train':  # BatchNorm in batch mode: compare one step from the same statistics
        net.train(), sub.train(), ref.train()
    for size in [(96, 160), (160, 96)]:
        x = torch.randn(2, 3, *size)
        fixed = net(x)
        assert [o.shape[1] for o in fixed] == list(SUB['widths'])
        assert _max_rel(fixed, sub(x)) <= 1e-5
        assert _max_rel(fixed, ref(x)) <= 1e-5
    net.fix(None)
    assert net.fixed_arch is None and net(torch.randn(1, 3, 64, 64))[0].shape[1] == 32


def test_depth_and_attention_against_a_hand_written_forward():
    """Full widths and ratios, fewer blocks and attention blocks: the supernet's own modules
    called by hand (an attention block in an FFN position runs its MLP residual only)."""
    net = _supernet(seed=2)
    arch = dict(S1, depths=(2, 3, 9, 5), num_attn_blocks=1,
                mlp_ratios=(S1['mlp_ratios'][0][:2], S1['mlp_ratios'][1],
                            S1['mlp_ratios'][2], S1['mlp_ratios'][3][:4] + (4, )))
    plan = [[(0, 'ffn'), (1, 'ffn')], [(0, 'ffn'), (1, 'ffn'), (2, 'ffn')],
            [(j, 'ffn') for j in range(8)] + [(8, 'attn')],
            [(0, 'ffn'), (1, 'ffn'), (2, 'ffn'), (3, 'ffn'), (5, 'attn')]]

    def by_hand(x):
        outs = []
        x = net.stem(x)
        for stage, blocks in zip(net.stages, plan):
            x = stage.downsample(x)
            for j, kind in blocks:
                block = stage.blocks[j]
                x = block(x) if kind == 'attn' else x + block.ls2(block.mlp(x))
            outs.append(x)
        return outs

    net.fix(arch)
    for size in [(64, 128), (128, 64)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert _max_rel(net(x), by_hand(x)) <= 1e-5


def _trailing(tensor, shape):
    return tensor[tuple(slice(tensor.shape[d] - n, None) for d, n in enumerate(shape))]


HIDDEN = {int(w * r) for w, ratios in zip(S1['widths'], S1['mlp_ratios']) for r in ratios}


def _hidden_from_the_end(tensor, shape):
    return tensor[tuple(slice(size - n, None) if size in HIDDEN else slice(0, n)
                        for size, n in zip(tensor.shape, shape))]


def _first_attention_blocks(self, depths, n):
    return [tuple(range(d - (n if i >= 2 else 0))) + tuple(
        range(most - self.arch['num_attn_blocks'],
              most - self.arch['num_attn_blocks'] + (n if i >= 2 else 0)))
            for i, (d, most) in enumerate(zip(depths, self.arch['depths']))]


@pytest.mark.parametrize('mutation', ['trailing channels', 'hidden channels from the end',
                                      'attention block from the wrong position'])
def test_broken_inheritance_is_caught(monkeypatch, mutation):
    """The comparison above fails when the supernet inherits wrongly."""
    if mutation == 'trailing channels':
        monkeypatch.setattr(supernet_module, 'leading_slice', _trailing)
    elif mutation == 'hidden channels from the end':
        monkeypatch.setattr(supernet_module, 'leading_slice', _hidden_from_the_end)
    else:
        monkeypatch.setattr(EfficientFormerV2Supernet, 'source_blocks', _first_attention_blocks)
    net = _supernet(seed=1)
    ref = _reference(net, SUB, SUB_SOURCES)
    net.fix(SUB)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        assert _max_rel(net(x), ref(x)) > 1e-2


def test_fixed_forward_trains_the_supernet_tensors():
    net = _supernet(seed=4).train()
    net.fix(SUB)
    bn = net.stages[1].blocks[1].mlp.fc1.bn
    before = bn.running_mean.clone()
    sum(o.square().mean() for o in net(torch.randn(2, 3, 64, 96))).backward()
    hidden = int(40 * 4)  # stage 2, block 2: width 40, ratio 4
    assert not torch.equal(bn.running_mean[:hidden], before[:hidden])
    assert torch.equal(bn.running_mean[hidden:], before[hidden:])
    grad = net.stages[2].blocks[0].mlp.fc1.conv.weight.grad
    assert grad[:320, :80].abs().sum() > 0 and grad[320:].abs().sum() == 0 \
        and grad[:, 80:].abs().sum() == 0
    assert net.stages[2].blocks[4].mlp.fc1.conv.weight.grad is None  # not kept
    assert net.stages[2].blocks[7].attn.q.conv.weight.grad is None  # attention dropped there
    assert net.stages[2].blocks[8].attn.q.conv.weight.grad is not None


def test_frozen_stages_stay_frozen_in_a_fixed_forward():
    net = _supernet(seed=4, frozen_stages=1).train()
    net.fix(SUB)
    bns = [m for m in net.stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    net(torch.randn(2, 3, 64, 64))
    assert bns and all(torch.equal(m.running_mean, b) for m, b in zip(bns, before))


def test_sampled_archs_span_the_trained_range():
    net = EfficientFormerV2Supernet('s2')
    small = net.smallest_arch()
    assert small['widths'] == (32, 48, 96, 176) and small['depths'] == (1, 1, 2, 2)
    assert small['num_attn_blocks'] == 1
    assert all(r == 3 for ratios in small['mlp_ratios'] for r in ratios)
    draws = [net.random_arch(random.Random(seed)) for seed in range(60)]
    assert draws[7] == net.random_arch(random.Random(7))  # reproducible from the seed
    for arch in draws:
        assert net.check_subnet(arch) == arch
        assert all(lo <= w <= hi and w % 8 == 0 for lo, w, hi in
                   zip(net.min_widths, arch['widths'], net.arch['widths']))
        assert all(lo <= d <= hi for lo, d, hi in
                   zip(net.min_depths, arch['depths'], net.arch['depths']))
    assert {a['num_attn_blocks'] for a in draws} == {1, 2, 3, 4}
    assert {r for a in draws for ratios in a['mlp_ratios'] for r in ratios} == {3, 4}
    # S2's ratio-3 blocks offer 3 only
    assert net.ratio_choices(2, 2) == (3, ) and net.ratio_choices(2, 0) == (3, 4)


def test_initialises_from_an_efficientformerv2_file(tmp_path):
    torch.manual_seed(5)
    s1 = randomize(EfficientFormerV2('s1'), seed=5).eval()
    path = str(tmp_path / 's1.pth')
    torch.save({'state_dict': s1.state_dict()}, path)
    net = EfficientFormerV2Supernet('s1', init_cfg=dict(type='Pretrained', checkpoint=path))
    net.init_weights()
    net.eval()
    x = torch.randn(1, 3, 96, 128)
    assert _max_rel(net(x), s1(x)) <= 1e-6


@pytest.mark.parametrize('change, message', [
    (dict(widths=(24, 40, 100, 160)), r'widths\[2\] \(stage 3\) must be a multiple of 8'),
    (dict(widths=(24, 40, 80, 232)), "up to the supernet's 224"),
    (dict(depths=(2, 3, 5, 7), mlp_ratios=SUB['mlp_ratios'][:3] + ((4, ) * 7, )),
     'stage 4 has 7 blocks, the supernet 6'),
    (dict(num_attn_blocks=3, depths=(2, 3, 5, 4)), "more than the supernet's 2"),
    (dict(mlp_ratios=((4, 3), (3, 4, 4), (4, 3, 4, 2, 4), (3, 4, 3, 4))),
     r"block 3 of stage 3 \(the supernet's block 3\) has MLP ratio 4: at most 3"),
    (dict(mlp_ratios=SUB['mlp_ratios'][:3]), 'mlp_ratios'),
])
def test_invalid_subnets_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        _supernet().fix(dict(SUB, **change))
    missing = {k: v for k, v in SUB.items() if k != 'mlp_ratios'}
    with pytest.raises(ValueError, match="missing keys: \\['mlp_ratios'\\]"):
        _supernet().extract(missing)


def test_supernet_arguments_are_checked():
    with pytest.raises(ValueError, match='multiples of 8'):
        EfficientFormerV2Supernet(dict(S1, widths=(32, 48, 120, 220)))
    with pytest.raises(ValueError, match='min_widths'):
        EfficientFormerV2Supernet('s1', min_widths=(32, 48, 128, 176))
    with pytest.raises(ValueError, match=r'min_attn_blocks must be an int in \[0, 2\]'):
        EfficientFormerV2Supernet('s1', min_attn_blocks=3)
