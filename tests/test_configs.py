"""Every config under configs/ loads, builds its model, data pipeline and optimizer.

The dataset files are synthetic COCO / ADE20K trees written by the tests; the Pretrained init
of the real configs is pointed at an ImageNet checkpoint the test writes in the original format.
"""
import argparse
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmef  # noqa: F401
from mmef.checkpoint.keys import map_original
from tool_helpers import ROOT, tiny_ade, tiny_coco

# every model config (configs/_base_/ holds fragments that other configs inherit; the mmdeploy
# configs are tested by tests/test_mmdeploy.py)
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if not {'_base_', 'mmdeploy'} & set(osp.relpath(p, ROOT).split(os.sep)))
WIDTHS = dict(l1=(48, 96, 224, 448), l3=(64, 128, 320, 512), l7=(96, 192, 384, 768))


def _rel(path):
    return osp.relpath(path, ROOT)


def test_expected_configs_exist():
    names = {_rel(p) for p in CONFIGS}
    for arch in ('l1', 'l3', 'l7'):
        assert f'configs/mask_rcnn/mask-rcnn_efficientformer-{arch}_fpn_1x_coco.py' in names
        assert (f'configs/semantic_fpn/fpn_efficientformer-{arch}_8xb4-40k_ade20k-512x512.py'
                in names)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('cfgdata')
    return dict(coco=tiny_coco(str(root / 'coco')), ade=tiny_ade(str(root / 'ade')))


def _original_imagenet_file(model, path):
    """Writes ``model``'s weights as an original EfficientFormer ImageNet checkpoint."""
    from mmef.models import EfficientFormer
    widths = tuple(model.widths)
    arch = next(a for a, w in WIDTHS.items() if w == widths)
    ref = EfficientFormer(arch)
    # invert the key map on a probe: map_original(original) == mmef names
    depths = EfficientFormer.arch_settings[arch]['depths']
    n3d = EfficientFormer.arch_settings[arch]['num_attn_blocks']
    original = {}
    names = {'stem.conv1.conv': 'patch_embed.0', 'stem.conv1.bn': 'patch_embed.1',
             'stem.conv2.conv': 'patch_embed.3', 'stem.conv2.bn': 'patch_embed.4'}
    sub4 = {'mlp.fc1.conv': 'mlp.fc1', 'mlp.fc1.bn': 'mlp.norm1', 'mlp.fc2.conv': 'mlp.fc2',
            'mlp.fc2.bn': 'mlp.norm2', 'ls1.gamma': 'layer_scale_1', 'ls2.gamma': 'layer_scale_2'}
    sub3 = {'attn.qkv': 'token_mixer.qkv', 'attn.proj': 'token_mixer.proj',
            'attn.bias_table': 'token_mixer.attention_biases', 'ls1.gamma': 'layer_scale_1',
            'ls2.gamma': 'layer_scale_2'}

    def rename(rest, table):
        for new, old in table.items():
            if rest == new or rest.startswith(new + '.'):
                return old + rest[len(new):]
        return rest

    num_4d_last = depths[3] - n3d
    for key, value in ref.state_dict().items():
        parts = key.split('.')
        if key.startswith('norm'):
            continue  # output norms are not in ImageNet files
        if key.startswith('stem.'):
            new = rename(key, names)
        elif parts[2] == 'downsample':
            s = int(parts[1])
            new = f'network.{2 * s - 1}.' + rename('.'.join(parts[3:]), {'conv': 'proj',
                                                                         'bn': 'norm'})
        elif parts[2] == 'blocks':
            s, b = int(parts[1]), int(parts[3])
            new = f'network.{2 * s}.{b}.' + rename('.'.join(parts[4:]), sub4)
        else:  # attn_blocks, after the flatten slot
            j = int(parts[3])
            new = f'network.6.{num_4d_last + 1 + j}.' + rename('.'.join(parts[4:]), sub3)
        original[new] = torch.randn_like(value) if value.is_floating_point() else value
    assert set(map_original(original)) == {k for k in ref.state_dict() if not
                                           k.startswith('norm')}
    original['head.weight'] = torch.randn(1000, widths[-1])
    original['head.bias'] = torch.zeros(1000)
    torch.save({'model': original, 'args': argparse.Namespace(model=f'efficientformer_{arch}'),
                'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 299}, path)
    return map_original(original)


def _point_to_data(cfg, data):
    if cfg.default_scope == 'mmdet':
        root = data['coco'] + '/'
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            ds = cfg[name].dataset
            ds.data_root = root
            if 'metainfo' not in ds:  # the COCO configs: our files only have shape classes
                ds.metainfo = dict(classes=('circle', 'square', 'triangle', 'star'))
    else:
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[name].dataset.data_root = data['ade']


@pytest.mark.parametrize('path', [p for p in CONFIGS
                                  if 'efficientformerv2' not in p and 'supernet' not in p],
                         ids=_rel)
def test_config_builds(path, data, tmp_path):
    """V1 configs (the V2 ones: tests/test_v2_configs.py)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DATASETS, MODELS
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmef'], allow_failed_imports=False)
    scope = cfg.default_scope
    assert scope in ('mmdet', 'mmseg')
    init_default_scope(scope)
    backbone = cfg.model.backbone
    assert backbone.type == 'EfficientFormer'
    assert list(cfg.model.neck.in_channels) == list(WIDTHS[backbone.arch])
    demo = '/demo/' in path
    if not demo:  # the recipe of the paper
        init = backbone.init_cfg
        assert init.type == 'Pretrained' and f'efficientformer_{backbone.arch}' in \
            init.checkpoint
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.optimizer.lr == 2e-4
        assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
        if scope == 'mmdet':
            assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_epochs == 12
            assert cfg.param_scheduler[0].end == 500
            assert cfg.param_scheduler[1].milestones == [8, 11]
        else:
            assert cfg.train_dataloader.batch_size == 4 and cfg.train_cfg.max_iters == 40000
            assert cfg.param_scheduler[0].type == 'PolyLR' and \
                cfg.param_scheduler[0].power == 0.9
            assert cfg.model.decode_head.num_classes == 150
        ckpt = str(tmp_path / 'imagenet.pth')
        cfg.model.backbone.init_cfg.checkpoint = ckpt
    # L1 loads an ImageNet file in the original format (writing L3 / L7 ones costs too much
    # time; their key maps are tested with the checkpoint code)
    pretrained = not demo and backbone.arch == 'l1'
    if not pretrained:
        cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if pretrained:
        expected = _original_imagenet_file(model.backbone, ckpt)
        model.backbone.init_weights()
        own = model.backbone.state_dict()
        key = 'stages.3.attn_blocks.0.attn.qkv.weight'
        assert torch.equal(own[key], expected[key])
        assert torch.equal(own['stem.conv1.conv.weight'], expected['stem.conv1.conv.weight'])
    # backbone + neck fit together on a small input
    with torch.no_grad():
        feats = model.neck(model.backbone.eval()(torch.rand(1, 3, 64, 96)))
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)

    # optimizer: no decay on attention tables, layer scales and norms
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    assert decay['backbone.stages.3.attn_blocks.0.attn.bias_table'] == 0
    assert decay['backbone.stages.0.blocks.0.ls1.gamma'] == 0
    assert decay['backbone.stem.conv1.bn.weight'] == 0
    assert decay['backbone.norm3.weight'] == 0
    assert decay['backbone.stages.3.attn_blocks.0.norm1.weight'] == 0
    assert decay['backbone.stages.3.attn_blocks.0.attn.qkv.weight'] == pytest.approx(1e-4)
    assert decay['backbone.stem.conv1.conv.weight'] == pytest.approx(1e-4)
    if demo and scope == 'mmdet':  # from scratch: neck and heads at 1/4 of the backbone's lr
        lr = {names[id(p)]: g['lr'] for g in wrapper.optimizer.param_groups
              for p in g['params']}
        base = cfg.optim_wrapper.optimizer.lr
        assert lr['backbone.stem.conv1.conv.weight'] == base
        assert lr['backbone.stages.3.attn_blocks.0.attn.bias_table'] == base
        for name in ('neck.fpn_convs.0.conv.weight', 'rpn_head.rpn_conv.weight',
                     'roi_head.bbox_head.fc_cls.weight', 'roi_head.mask_head.conv_logits.weight'):
            assert lr[name] == pytest.approx(base / 4), name

    # data pipelines on the files the fixture wrote
    _point_to_data(cfg, data)
    for name in ('train_dataloader', 'val_dataloader'):
        dataset = DATASETS.build(cfg[name].dataset)
        assert len(dataset) > 0
        sample = dataset[0]
        inputs, ds = sample['inputs'], sample['data_samples']
        assert inputs.dim() == 3 and inputs.shape[0] == 3
        if scope == 'mmdet':
            assert len(ds.gt_instances) > 0
            if name == 'train_dataloader':  # the test pipeline loads masks after Resize
                assert ds.gt_instances.masks.height == inputs.shape[1]
        else:
            labels = ds.gt_sem_seg.data.unique()
            assert set(labels.tolist()) <= {1, 2, 4, 6, 9, 12, 255}  # ADE ids - 1, ignore
            assert ds.gt_sem_seg.data.shape[-2:] == inputs.shape[-2:] or name == 'val_dataloader'


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'supernet' in p
                                  and 'efficientformerv2' not in p], ids=_rel)
def test_supernet_config_builds(path):
    """The supernet configs: the recipe of the config they inherit with an
    EfficientFormerSupernet of the same widths (L7's ImageNet weights for the real ones), no
    weight decay on the architecture weights, and the temperature hook."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import HOOKS, MODELS
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmef'], allow_failed_imports=False)
    init_default_scope(cfg.default_scope)
    backbone = cfg.model.backbone
    assert backbone.type == 'EfficientFormerSupernet'
    assert list(cfg.model.neck.in_channels) == list(WIDTHS[backbone.arch])
    if '/demo/' not in path:
        assert backbone.arch == 'l7' and backbone.init_cfg.type == 'Pretrained'
        assert 'efficientformer_l7' in backbone.init_cfg.checkpoint
        assert cfg.optim_wrapper.optimizer.lr == 2e-4
    hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    assert [type(h).__name__ for h in hooks] == ['SupernetTemperatureHook']
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    with torch.no_grad():
        feats = model.neck(model.backbone.eval()(torch.rand(1, 3, 64, 96)))
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    base = cfg.optim_wrapper.optimizer.weight_decay
    assert decay['backbone.stages.3.blocks.0.alpha'] == 0
    assert decay['backbone.stages.0.blocks.0.mb4d.ls1.gamma'] == 0
    assert decay['backbone.stages.3.blocks.0.mb4d.mlp.fc1.conv.weight'] == pytest.approx(base)

