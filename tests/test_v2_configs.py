"""The EfficientFormerV2 configs: recipe, model + neck, ImageNet init from an original V2 file,
and one real training step of the S0 Mask R-CNN and Semantic FPN on files the tests write."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, MODELS, DefaultScope

import mmef  # noqa: F401
from _original_ref import save_imagenet_checkpoint
from _original_ref_v2 import ARCHS, make_original_v2
from mmef.checkpoint.keys import to_mmef
from tool_helpers import ROOT, tiny_ade, tiny_coco

V2_CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '*', '*efficientformerv2*.py'))
                    if 'supernet' not in p)
V2_SUPERNET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*',
                                                '*efficientformerv2-supernet*.py')))


def test_every_variant_has_both_configs():
    names = {osp.basename(p) for p in V2_CONFIGS}
    for arch in ARCHS:
        assert f'mask-rcnn_efficientformerv2-{arch}_fpn_1x_coco.py' in names
        assert f'fpn_efficientformerv2-{arch}_8xb4-40k_ade20k-512x512.py' in names


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('v2cfg')
    return dict(coco=tiny_coco(str(root / 'coco')), ade=tiny_ade(str(root / 'ade')))


def _build(cfg):
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if cfg.default_scope == 'mmdet':
            import mmdet.models  # noqa: F401
        else:
            import mmseg.models  # noqa: F401
        return revert_sync_batchnorm(MODELS.build(cfg.model))


@pytest.mark.parametrize('path', V2_CONFIGS, ids=osp.basename)
def test_v2_config_recipe_and_model(path, tmp_path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmef'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    arch = backbone.arch
    assert backbone.type == 'EfficientFormerV2' and backbone.norm_eval is True
    assert list(cfg.model.neck.in_channels) == list(ARCHS[arch][0])
    assert backbone.init_cfg.checkpoint.endswith(f'eformer_{arch}_450.pth')
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr) == ('AdamW', 2e-4)
    if cfg.default_scope == 'mmdet':
        assert opt.weight_decay == 0.05 and cfg.train_cfg.max_epochs == 12
    else:
        assert opt.weight_decay == 1e-4 and cfg.train_cfg.max_iters == 40000
        assert cfg.model.decode_head.num_classes == 150
    if arch == 's0':  # ImageNet init from an original-format V2 file
        sd = make_original_v2('s0', seed=7)
        save_imagenet_checkpoint(tmp_path / 'eformer_s0_450.pth', sd)
        cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'eformer_s0_450.pth')
    else:
        cfg.model.backbone.init_cfg = None
    model = _build(cfg)
    model.backbone.init_weights()
    if arch == 's0':
        expected = to_mmef(sd)
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        feats = model.neck(model.backbone.eval()(torch.rand(1, 3, 64, 96)))
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)


@pytest.mark.parametrize('path', V2_SUPERNET_CONFIGS, ids=osp.basename)
def test_v2_supernet_config(path, tmp_path):
    """The V2 supernet configs: the recipe they inherit, an EfficientFormerV2Supernet trained by
    a sandwich loop; the real ones start from the released V2-L ImageNet file (written here in
    the original format), which fills the whole supernet."""
    from mmengine.registry import LOOPS
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmef'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'EfficientFormerV2Supernet'
    assert cfg.train_cfg.type in ('SandwichIterBasedTrainLoop', 'SandwichEpochBasedTrainLoop')
    assert LOOPS.get(cfg.train_cfg.type).__name__ == cfg.train_cfg.type
    if '/demo/' in path:
        assert backbone.init_cfg is None and backbone.arch['widths'] == (32, 64, 144, 288)
        assert cfg.train_cfg.num_random == 1
    else:
        assert backbone.arch == 'l' and backbone.norm_eval is True
        assert cfg.train_cfg.num_random == 2
        assert (cfg.optim_wrapper.optimizer.type, cfg.optim_wrapper.optimizer.lr) == \
            ('AdamW', 2e-4)
        assert backbone.init_cfg.checkpoint.endswith('eformer_l_450.pth')
        sd = make_original_v2('l', seed=3)
        save_imagenet_checkpoint(tmp_path / 'eformer_l_450.pth', sd)
        cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'eformer_l_450.pth')
    model = _build(cfg)
    model.backbone.init_weights()
    if backbone.init_cfg is not None:
        expected = to_mmef(sd)
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, expected[key]), key
    widths = list(model.backbone.widths)
    assert list(cfg.model.neck.in_channels) == widths
    with torch.no_grad():
        feats = model.neck(model.backbone.eval()(torch.rand(1, 3, 64, 96)))
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_s0_training_step(task, data):
    """One optimizer step of the real S0 config (its own pipeline, at a reduced image scale)."""
    name = ('mask_rcnn/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py' if task == 'det' else
            'semantic_fpn/fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    cfg.model.backbone.init_cfg = None
    dataset_cfg = cfg.train_dataloader.dataset
    if task == 'det':
        dataset_cfg.data_root = data['coco'] + '/'
        dataset_cfg.metainfo = dict(classes=('circle', 'square', 'triangle', 'star'))
        cfg.model.roi_head.bbox_head.num_classes = 4
        cfg.model.roi_head.mask_head.num_classes = 4
        resize = next(t for t in dataset_cfg.pipeline if t.type == 'Resize')
        resize.scale = (320, 256)
    else:
        dataset_cfg.data_root = data['ade']
        resize = next(t for t in dataset_cfg.pipeline if t.type == 'RandomResize')
        resize.scale = (512, 128)
        crop = next(t for t in dataset_cfg.pipeline if t.type == 'RandomCrop')
        crop.crop_size = (128, 128)
        cfg.model.data_preprocessor.size = (128, 128)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = _build(cfg)
        model.init_weights()
        model.train()
        assert all(not m.training for m in model.backbone.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval, as the original
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        dataset = DATASETS.build(dataset_cfg)
        batch = pseudo_collate([dataset[0], dataset[1]])
        before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        losses = model.train_step(batch, wrapper)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    unchanged = [n for n, p in model.backbone.named_parameters() if torch.equal(p, before[n])]
    # every parameter took the step, except BN weights (1.0) whose AdamW update can be below
    # float32 resolution when their gradient is tiny at init (q / k of the attention)
    assert all(n.endswith('bn.weight') for n in unchanged), unchanged
    assert len(unchanged) < 0.05 * len(before)
