"""The sandwich rule and BatchNorm recalibration (mmef.sandwich) on a real Semantic FPN model with
a small EfficientFormerV2 supernet and generated scenes: one iteration's update is the mean of
the passes' gradients, only the largest pass moves the running statistics, recalibrated
statistics are the batch averages computed here by hand and are restored afterwards, the loops
train through tools/train.py, and a plain backbone is refused."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmef  # noqa: F401
from mmef.sandwich import recalibrated, sandwich_archs, sandwich_step
from tool_helpers import ROOT, as_argv, seg_options, tiny_ade
from weights import randomize

CONFIG = osp.join(ROOT, 'configs/demo/fpn_efficientformerv2-supernet-s2_scenes-demo.py')
SMALL = dict(widths=(16, 24, 48, 64), depths=(2, 2, 3, 3), num_attn_blocks=2,
             mlp_ratios=((4, 4), (4, 4), (4, 4, 4), (4, 4, 4)))


def small_config(tmp_path):
    """The V2 supernet demo config with a small supernet."""
    path = tmp_path / 'small_supernet.py'
    path.write_text(f'_base_ = {CONFIG!r}\n'
                    f'model = dict(backbone=dict(arch={SMALL!r}, min_widths=(8, 8, 16, 24)),\n'
                    f'             neck=dict(in_channels={list(SMALL["widths"])!r}))\n')
    return str(path)


def _setup(tmp_path, seed=0):
    cfg = Config.fromfile(small_config(tmp_path))
    cfg.merge_from_dict(seg_options(tiny_ade(str(tmp_path / 'ade'))))
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
        model.init_weights()
        randomize(model.backbone, seed=seed)
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
        batches = [batch for _, batch in zip(range(2), loader)]
    for m in model.modules():  # no dropout: the passes are compared one by one below
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.
    return model.train(), batches


def _losses(model, batch):
    data = model.data_preprocessor(batch, True)
    return model.parse_losses(model(**data, mode='loss'))[0]


def test_archs_of_an_iteration():
    from mmef.models import EfficientFormerV2Supernet
    net = EfficientFormerV2Supernet(SMALL, min_widths=(8, 8, 16, 24))
    archs = sandwich_archs(net, 0, 5, 2)
    assert archs[0] == net.smallest_arch() and archs[-1] == net.largest_arch()
    assert len(archs) == 4 and archs == sandwich_archs(net, 0, 5, 2)  # the same on every rank
    assert sandwich_archs(net, 0, 6, 2)[1:3] != archs[1:3]  # and new each iteration


@pytest.mark.parametrize('distill', [None, dict(weight=0.5)], ids=['plain', 'distill'])
def test_one_iteration_is_the_mean_of_the_passes(tmp_path, distill):
    """The update is the mean of the passes' gradients computed here by hand; with in-place
    distillation each smaller pass's loss also has 0.5 * the squared distance of its neck
    features to the largest network's (computed first, without gradients), relative to their
    mean square."""
    from mmengine.optim import build_optim_wrapper
    model, batches = _setup(tmp_path)
    backbone = model.backbone
    archs = sandwich_archs(backbone, 0, 0, 2)
    reference = copy.deepcopy(model)
    # by hand: each pass's gradient, the mean of them
    reference.zero_grad()
    if distill:
        reference.backbone.fix(archs[-1], full_width_outputs=True)
        with torch.no_grad():
            x = reference.data_preprocessor(batches[0], True)['inputs']
            teacher = reference.neck(reference.backbone(x))
        feats = {}
        reference.neck.register_forward_hook(lambda m, a, out: feats.update(out=out))
    for arch in archs:
        reference.backbone.fix(arch, full_width_outputs=True)
        loss = _losses(reference, batches[0])
        if distill and arch is not archs[-1]:
            loss = loss + 0.5 * sum(((s - t) ** 2).mean() / (t ** 2).mean()
                                    for s, t in zip(feats['out'], teacher))
        (loss / len(archs)).backward()
    reference.backbone.fix(None)
    grads = {k: p.grad.clone() for k, p in reference.named_parameters() if p.grad is not None}
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.state_dict().items() if 'running_mean' in k}
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=1.0)))
    logs = sandwich_step(model, batches[0], wrapper, archs, distill)
    assert backbone.fixed_arch is None
    assert set(logs) >= {'loss', 'loss_smallest', 'loss_sandwich'}
    assert ('loss_distill' in logs) == bool(distill)
    if distill:
        assert float(logs['loss_distill']) > 1e-4  # the smallest is not the largest
    moved = 0
    for key, param in model.named_parameters():
        step = before[key] - param.detach()
        expected = grads.get(key, torch.zeros_like(step))
        assert torch.allclose(step, expected, atol=1e-6, rtol=1e-4), key
        moved += bool(step.abs().sum() > 0)
    assert moved > 100
    # running statistics: those of the largest pass alone
    largest = copy.deepcopy(reference)
    largest.load_state_dict({**largest.state_dict(), **stats})
    with torch.no_grad():
        _losses(largest, batches[0])
    for key, value in largest.state_dict().items():
        if 'running_mean' in key:
            assert torch.allclose(model.state_dict()[key], value, atol=1e-6), key
            changed = not torch.equal(value, stats[key])
            assert changed, key  # the largest pass uses every BatchNorm


def test_recalibrated_statistics_are_batch_averages_and_restored(tmp_path):
    model, batches = _setup(tmp_path, seed=1)
    backbone = model.backbone
    arch = backbone.smallest_arch()
    for m in model.modules():  # statistics of a trained model: many batches behind them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(1000)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    bn = backbone.stem.conv1.bn
    c = arch['widths'][0] // 2
    # by hand: the stem's first conv on each preprocessed batch, channel means and variances
    means, variances = [], []
    with torch.no_grad():
        for batch in batches:
            x = model.data_preprocessor(batch, True)['inputs']
            conv = backbone.stem.conv1.conv
            y = F.conv2d(x, conv.weight[:c], None if conv.bias is None else conv.bias[:c],
                         conv.stride, conv.padding)
            means.append(y.mean((0, 2, 3)))
            variances.append(y.var((0, 2, 3), unbiased=True))
    with recalibrated(model, arch, batches) as m:
        assert m is model and not model.training and backbone.fixed_arch == arch
        assert torch.allclose(bn.running_mean[:c], torch.stack(means).mean(0), atol=1e-5)
        assert torch.allclose(bn.running_var[:c], torch.stack(variances).mean(0), rtol=1e-4)
        assert bn.momentum == 0.1
        with torch.no_grad():
            x = model.data_preprocessor(batches[0], True)['inputs']
            recal = model.extract_feat(x)
    assert model.training and backbone.fixed_arch is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # recalibration changed what the sub-network computes
    backbone.fix(arch, full_width_outputs=True)
    with torch.no_grad():
        plain = model.eval().extract_feat(x)
    assert (recal[-1] - plain[-1]).abs().max() > 1e-3


def test_trains_with_tools_train(tmp_path):
    from tools import train as train_tool
    opts = seg_options(tiny_ade(str(tmp_path / 'ade')), iters=2)
    opts['train_cfg.val_interval'] = 100  # training only
    runner = train_tool.main([small_config(tmp_path), '--work-dir', str(tmp_path / 'work')]
                             + as_argv(opts))
    assert type(runner.train_loop).__name__ == 'SandwichIterBasedTrainLoop'
    assert runner.iter == 2
    log = runner.message_hub.log_scalars
    assert 'train/loss_smallest' in log and 'train/loss_sandwich' in log
    assert osp.isfile(osp.join(str(tmp_path / 'work'), 'iter_2.pth'))


def test_distill_option_is_checked():
    from mmef.sandwich import check_distill
    assert check_distill(None) is None and check_distill(dict(weight=2)) == dict(weight=2.0)
    with pytest.raises(ValueError, match=r'dict\(weight=W\)'):
        check_distill(dict(wieght=1.0))
    with pytest.raises(ValueError, match='positive'):
        check_distill(dict(weight=0))


def test_a_plain_backbone_is_refused(tmp_path):
    from tools import train as train_tool
    opts = seg_options(tiny_ade(str(tmp_path / 'ade')), iters=1)
    opts['train_cfg.type'] = 'SandwichIterBasedTrainLoop'
    with pytest.raises(TypeError, match='slimmable supernet.*got EfficientFormer:'):
        train_tool.main([osp.join(ROOT, 'configs/demo/fpn_efficientformer-l1_scenes-demo.py'),
                         '--work-dir', str(tmp_path / 'work')] + as_argv(opts))


def test_mask_rcnn_trains_with_the_epoch_loop(tmp_path):
    """The epoch-based sandwich loop trains mmdet's Mask R-CNN (the det demo config with a small
    V2 supernet) through tools/train.py; the two iterations log the sandwich losses."""
    from tool_helpers import DET_DEMO, det_options, tiny_coco
    from tools import train as train_tool
    config = tmp_path / 'det_supernet.py'
    config.write_text(
        f'_base_ = {DET_DEMO!r}\n'
        f"model = dict(backbone=dict(_delete_=True, type='EfficientFormerV2Supernet', "
        f'arch={SMALL!r}, min_widths=(8, 8, 16, 24), init_cfg=None),\n'
        f'             neck=dict(in_channels={list(SMALL["widths"])!r}))\n'
        "train_cfg = dict(type='SandwichEpochBasedTrainLoop', num_random=1)\n")
    opts = det_options(tiny_coco(str(tmp_path / 'coco')), epochs=1)
    opts['train_cfg.val_interval'] = 2  # training only
    runner = train_tool.main([str(config), '--work-dir', str(tmp_path / 'work')] + as_argv(opts))
    assert type(runner.train_loop).__name__ == 'SandwichEpochBasedTrainLoop'
    assert runner.iter == 2
    log = runner.message_hub.log_scalars
    assert {'train/loss_smallest', 'train/loss_sandwich', 'train/loss_mask'} <= set(log)
