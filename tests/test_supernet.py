"""EfficientFormerSupernet: the mixed supernet, its sub-networks (fix and extract agree, and at
full width with one-hot choices the supernet is the extracted network), architecture weights
(Gumbel weights, gradients, no weight decay), initialisation from an EfficientFormer file, the
temperature hook and the errors of invalid sub-networks. Weights are random and non-trivial."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper

import mmef  # noqa: F401
from mmef.hooks import SupernetTemperatureHook
from mmef.models import EfficientFormer, EfficientFormerSupernet
from mmef.models.supernet import mixing_weights
from weights import randomize

SUB = dict(widths=(32, 64, 160, 256),
           blocks=(('mb4d', 'identity', 'mb4d'), ('identity', 'mb4d'),
                   ('mb4d', 'identity', 'mb4d', 'mb4d', 'identity', 'mb4d'),
                   ('mb4d', 'identity', 'mb4d', 'mb3d')))


def _supernet(arch='l1', seed=0, **kwargs):
    torch.manual_seed(seed)
    net = randomize(EfficientFormerSupernet(arch, **kwargs), seed=seed)
    with torch.no_grad():
        for _, _, path in net.meta_paths():
            path.alpha.normal_()
    return net.eval()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_outputs_like_the_backbone_and_registered_for_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for registry in (DET, SEG):
        net = registry.build(dict(type='EfficientFormerSupernet', arch='l1', out_indices=(1, 3)))
        assert isinstance(net, EfficientFormerSupernet)
    outs = _supernet()(torch.rand(1, 3, 130, 70))
    assert [tuple(o.shape) for o in outs] == [(1, 48, 33, 18), (1, 96, 17, 9), (1, 224, 9, 5),
                                              (1, 448, 5, 3)]


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_fix_and_extract_agree(mode):
    net = _supernet(seed=1)
    sub = net.extract(SUB)
    assert isinstance(sub, EfficientFormer)
    assert sub.arch == dict(widths=(32, 64, 160, 256), depths=(2, 1, 4, 3), num_attn_blocks=1)
    # the first channels of the supernet's tensors
    assert torch.equal(sub.stages[2].blocks[1].mlp.fc1.conv.weight,
                       net.stages[2].blocks[2].mb4d.mlp.fc1.conv.weight[:640, :160])
    assert torch.equal(sub.stages[3].attn_blocks[0].attn.qkv.weight,
                       net.stages[3].blocks[3].mb3d.attn.qkv.weight[:, :256])
    net.fix(SUB)
    assert net.fixed_arch['widths'] == SUB['widths']
    if mode == 'train':  # BatchNorm in batch mode: compare one step from the same statistics
        net.train(), sub.train()
    for size in [(96, 160), (160, 96)]:
        x = torch.randn(2, 3, *size)
        for out, ref in zip(net(x), sub(x)):
            assert out.shape == ref.shape
            assert _rel(out, ref) <= 1e-5
    net.fix(None)
    assert net.fixed_arch is None and net(torch.randn(1, 3, 64, 64))[0].shape[1] == 48


def test_one_hot_supernet_is_the_extracted_network():
    """At full width with each MetaPath's alpha one-hot on its widest choice, the mixed forward
    (a different code path from fix / extract) gives what the extracted network gives."""
    net = _supernet(seed=2)
    with torch.no_grad():
        for _, _, path in net.meta_paths():
            path.alpha.fill_(-1e4)
            path.alpha[-1] = 1e4
    full = net.extract(net.largest_arch())
    for size in [(64, 96), (96, 64)]:
        x = torch.randn(1, 3, *size)
        for out, ref in zip(net(x), full(x)):
            assert _rel(out, ref) <= 1e-5


def test_gumbel_weights_and_gradients_reach_every_alpha():
    alpha = torch.randn(3)
    for noise in ('gumbel', 'uniform', 'none'):
        weights = mixing_weights(alpha, 0.7, noise)
        assert torch.allclose(weights.sum(), torch.tensor(1.)) and (weights > 0).all()
    torch.manual_seed(0)
    sharp = torch.stack([mixing_weights(alpha, 0.05, 'gumbel').argmax() for _ in range(4000)])
    freq = torch.bincount(sharp, minlength=3) / 4000.
    assert torch.allclose(freq, alpha.softmax(0), atol=0.03)  # Gumbel: samples of softmax(alpha)
    net = _supernet(seed=3).train()
    sum(o.square().mean() for o in net(torch.randn(2, 3, 64, 96))).backward()
    for i, j, path in net.meta_paths():
        assert path.alpha.grad is not None and path.alpha.grad.abs().sum() > 0, (i, j)


def test_fixed_forward_trains_the_supernet_tensors():
    net = _supernet(seed=4).train()
    net.fix(SUB)
    before = net.stages[1].blocks[1].mb4d.mlp.fc1.bn.running_mean.clone()
    sum(o.square().mean() for o in net(torch.randn(2, 3, 64, 96))).backward()
    mean = net.stages[1].blocks[1].mb4d.mlp.fc1.bn.running_mean
    assert not torch.equal(mean[:256], before[:256]) and torch.equal(mean[256:], before[256:])
    grad = net.stages[2].blocks[0].mb4d.mlp.fc1.conv.weight.grad
    assert grad[:640, :160].abs().sum() > 0 and grad[640:].abs().sum() == 0
    assert net.stages[1].blocks[0].mb4d.mlp.fc1.conv.weight.grad is None  # identity there
    assert all(path.alpha.grad is None for _, _, path in net.meta_paths())


def test_alphas_get_no_weight_decay():
    net = _supernet()
    wrapper = build_optim_wrapper(net, dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=dict(custom_keys={'.alpha': dict(decay_mult=0.)})))
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups for p in g['params']}
    for name, param in net.named_parameters():
        assert decay[id(param)] == (0. if name.endswith('.alpha') else 0.05), name


def test_initialises_from_an_efficientformer_file(tmp_path):
    """An EfficientFormer file fills the paths it has: the sub-network of its own shape,
    extracted from the supernet, computes what the file's network computes."""
    torch.manual_seed(5)
    l1 = randomize(EfficientFormer('l1'), seed=5).eval()
    path = str(tmp_path / 'l1.pth')
    torch.save({'state_dict': l1.state_dict()}, path)
    net = EfficientFormerSupernet('l1', init_cfg=dict(type='Pretrained', checkpoint=path))
    net.init_weights()
    arch = dict(widths=(48, 96, 224, 448),
                blocks=(('mb4d',) * 3, ('mb4d',) * 2, ('mb4d',) * 6, ('mb4d',) * 3 + ('mb3d',)))
    sub = net.eval().extract(arch)
    x = torch.randn(1, 3, 96, 128)
    for out, ref in zip(sub(x), l1(x)):
        assert _rel(out, ref) <= 1e-6


@pytest.mark.parametrize('change, message', [
    (dict(widths=(40, 64, 160, 256)), 'multiple of 16'),
    (dict(widths=(32, 64, 160, 464)), r'multiple of 16 in \[16, 448\]'),
    (dict(blocks=(('identity',) * 3,) + SUB['blocks'][1:]), 'stage 1 must keep'),
    (dict(blocks=SUB['blocks'][:3] + (('mb3d', 'identity', 'mb4d', 'mb3d'),)),
     'block 1 of stage 4 chooses from'),
    (dict(blocks=SUB['blocks'][:2] + (('mb3d',) * 6,) + SUB['blocks'][3:]),
     'block 1 of stage 3 chooses from'),
    (dict(blocks=SUB['blocks'][:3] + (('mb4d', 'identity'),)), 'stage 4 has 4 blocks'),
])
def test_invalid_subnets_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        _supernet().fix(dict(SUB, **change))


def test_mb3d_only_ends_the_network():
    net = EfficientFormerSupernet(dict(widths=(32, 64, 96, 128), depths=(1, 1, 1, 3),
                                       num_attn_blocks=2))
    arch = dict(widths=(32, 64, 96, 128), blocks=(('mb4d',), ('mb4d',), ('mb4d',),
                                                   ('mb4d', 'mb3d', 'mb4d')))
    with pytest.raises(ValueError, match='an MB4D block follows an MB3D block'):
        net.extract(arch)


def test_temperature_hook_schedule():
    hook = SupernetTemperatureHook(start=5., end=0.5)
    assert hook.temperature(0) == pytest.approx(5.) and hook.temperature(1) == pytest.approx(0.5)
    assert hook.temperature(0.5) == pytest.approx((5 * 0.5) ** 0.5)
    assert SupernetTemperatureHook(4., 1., 'linear').temperature(0.5) == pytest.approx(2.5)
    with pytest.raises(ValueError, match='schedule'):
        SupernetTemperatureHook(schedule='cosine')


def test_trains_with_tools_train_and_anneals_the_temperature(tmp_path):
    """tools/train.py, single process, the supernet demo config on generated scenes: the
    architecture weights train (no weight decay group checked above) and the hook anneals tau
    from 5 to 0.5 over the 3 iterations."""
    import os.path as osp

    from tool_helpers import ROOT, as_argv, seg_options, tiny_ade
    from tools import train as train_tool
    config = osp.join(ROOT, 'configs/demo/fpn_efficientformer-supernet-l1_scenes-demo.py')
    data = tiny_ade(str(tmp_path / 'ade'))
    opts = seg_options(data, iters=3)
    opts['train_cfg.val_interval'] = 100  # training only
    runner = train_tool.main([config, '--work-dir', str(tmp_path / 'work')] + as_argv(opts))
    backbone = runner.model.backbone
    assert isinstance(backbone, EfficientFormerSupernet)
    assert backbone.tau == pytest.approx(0.5)
    assert all(path.alpha.abs().sum() > 0 for _, _, path in backbone.meta_paths())


def test_mixing_weights_divide_by_the_temperature():
    """softmax((alpha + eps) / tau): [0, 1] at tau 0.5 without noise is softmax([0, 2]); the
    noise is added before the division (uniform noise u: softmax((alpha + u) / tau))."""
    alpha = torch.tensor([0., 1.])
    assert torch.allclose(mixing_weights(alpha, 0.5, 'none'), torch.softmax(
        torch.tensor([0., 2.]), 0))
    torch.manual_seed(1)
    u = torch.rand(2).clamp(1e-10, 1 - 1e-10)
    torch.manual_seed(1)
    assert torch.allclose(mixing_weights(alpha, 0.5, 'uniform'), torch.softmax((alpha + u) / 0.5,
                                                                               0))


def test_eval_mode_adds_no_noise():
    """In eval mode the mixing weights are softmax(alpha / tau): the same output twice, and the
    output of a supernet with noise='none'; in training mode the noise changes it."""
    x = torch.randn(1, 3, 64, 96)
    net = _supernet(seed=4)
    quiet = _supernet(seed=4, noise='none')
    with torch.no_grad():
        first, second, reference = net(x), net(x), quiet(x)
        for a, b, c in zip(first, second, reference):
            assert torch.equal(a, b) and torch.equal(a, c)
        net.train()
        noisy = net(x)
    assert any(_rel(a, b) > 1e-3 for a, b in zip(noisy, first))
