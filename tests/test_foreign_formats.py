"""timm and mmpretrain EfficientFormer files give the same weights as the original file.

The timm and mmpretrain layouts are produced here from an original-format ImageNet dict by inverse
mappings written in this test from those projects' published module layouts (timm
``efficientformer.py``: stem.conv1/norm1, stages.i.downsample.{conv,norm}, stages.i.blocks.j,
ls1.gamma, head_dist; mmpretrain ``EfficientFormer`` + ``EfficientFormerClsHead``:
backbone.patch_embed.{0,1}.{conv,bn}, backbone.network.i.0 downsampling, ls1.weight, a LayerNorm
backbone.norm3, head.head / head.dist_head).
"""
import re

import pytest
import torch

from _original_ref import make_original_backbone, save_imagenet_checkpoint
from mmef.checkpoint.convert import convert_checkpoint
from mmef.checkpoint.keys import detect_format, map_mmpretrain, map_timm, to_mmef
from mmef.models import EfficientFormer


def original_to_timm(sd):
    stem = {'0': 'conv1', '1': 'norm1', '3': 'conv2', '4': 'norm2'}
    out = {}
    for key, value in sd.items():
        new = re.sub(r'layer_scale_([12])$', r'ls\1.gamma', key)
        m = re.match(r'patch_embed\.(\d)\.(.+)', new)
        if m:
            new = f'stem.{stem[m.group(1)]}.{m.group(2)}'
        m = re.match(r'network\.([135])\.(proj|norm)\.(.+)', new)
        if m:
            part = 'conv' if m.group(2) == 'proj' else 'norm'
            new = f'stages.{(int(m.group(1)) + 1) // 2}.downsample.{part}.{m.group(3)}'
        m = re.match(r'network\.([0246])\.(\d+)\.(.+)', new)
        if m:
            new = f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{m.group(3)}'
        new = re.sub(r'^dist_head\.', 'head_dist.', new)
        out[new] = value
    return out


def original_to_mmpretrain(sd):
    """Whole-classifier keys: 'backbone.' + backbone, and the classification head."""
    stem = {'0': '0.conv', '1': '0.bn', '3': '1.conv', '4': '1.bn'}
    out = {}
    for key, value in sd.items():
        new = re.sub(r'layer_scale_([12])$', r'ls\1.weight', key)
        m = re.match(r'patch_embed\.(\d)\.(.+)', new)
        if m:
            new = f'backbone.patch_embed.{stem[m.group(1)]}.{m.group(2)}'
        m = re.match(r'network\.([135])\.(proj|norm)\.(.+)', new)
        if m:
            part = 'conv' if m.group(2) == 'proj' else 'bn'
            new = f'backbone.network.{(int(m.group(1)) + 1) // 2}.0.{part}.{m.group(3)}'
        m = re.match(r'network\.([0246])\.(\d+)\.(.+)', new)
        if m:
            stage = int(m.group(1)) // 2
            slot = int(m.group(2)) + (stage > 0)  # slot 0 of stages 1..3 is the downsampling
            new = f'backbone.network.{stage}.{slot}.{m.group(3)}'
        new = re.sub(r'^norm\.', 'backbone.norm3.', new)
        new = re.sub(r'^head\.', 'head.head.', new)
        new = re.sub(r'^dist_head\.', 'head.dist_head.', new)
        out[new] = value
    return out


def _backbone(sd):
    return {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] is b[key] or torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_timm_and_mmpretrain_layouts_map_to_the_original_weights(arch):
    original = make_original_backbone(arch, None, seed=31, num_classes=10)
    expected = to_mmef(original)
    timm = original_to_timm(original)
    mmpretrain = original_to_mmpretrain(original)
    assert len(timm) == len(original) and len(mmpretrain) == len(original)
    assert detect_format(timm) == 'timm'
    assert detect_format(_backbone(mmpretrain)) == 'mmpretrain'

    _assert_same(to_mmef(timm), expected)
    _assert_same(map_timm(timm), expected)
    # mmpretrain keeps its classifier outside the backbone; everything else must match
    backbone_expected = {k: v for k, v in expected.items() if not k.startswith(('head.',
                                                                                'dist_head.'))}
    _assert_same(map_mmpretrain(_backbone(mmpretrain)), backbone_expected)
    for mapped in (to_mmef(timm), to_mmef(_backbone(mmpretrain))):
        _assert_same(to_mmef(mapped), mapped)  # idempotent
        _assert_same(map_timm(mapped), mapped)
        _assert_same(map_mmpretrain(mapped), mapped)


@pytest.fixture(scope='module')
def l1_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('foreign')
    original = make_original_backbone('l1', None, seed=32, num_classes=10)
    save_imagenet_checkpoint(root / 'original.pth', original)
    torch.save(original_to_timm(original), root / 'timm.pth')  # timm files are bare state dicts
    torch.save({'meta': {'mmpretrain_version': '1.0.0'},
                'state_dict': original_to_mmpretrain(original)}, root / 'mmpretrain.pth')
    return root


def test_converter_gives_the_same_file_content(l1_files, tmp_path):
    outs = {}
    for name in ('original', 'timm', 'mmpretrain'):
        s = convert_checkpoint(l1_files / f'{name}.pth', tmp_path / f'{name}_mmef.pth')
        assert (s['format'], s['kind'], s['arch']) == (name, 'imagenet', 'l1')
        assert s['left_over'] == [] and s['missing'] == []
        outs[name] = torch.load(tmp_path / f'{name}_mmef.pth', weights_only=True)
    _assert_same(outs['timm'], outs['original'])
    _assert_same(outs['mmpretrain'], outs['original'])


@pytest.mark.parametrize('resolution', [7, 25])
def test_init_cfg_pretrained_loads_them_like_original_files(l1_files, resolution):
    states, outputs = {}, {}
    x = torch.randn(1, 3, 224, 256, generator=torch.Generator().manual_seed(0))
    for name in ('original', 'timm', 'mmpretrain'):
        model = EfficientFormer('l1', attn_bias_resolution=resolution,
                                init_cfg=dict(type='Pretrained',
                                              checkpoint=str(l1_files / f'{name}.pth')))
        model.init_weights()
        states[name] = model.state_dict()
        with torch.no_grad():
            outputs[name] = model.eval()(x)
    # mmpretrain's LayerNorm norm3 belongs to its classifier: the output GroupNorm stays fresh
    assert torch.equal(states['mmpretrain']['norm3.weight'], torch.ones(448))
    for name in ('timm', 'mmpretrain'):
        _assert_same(states[name], states['original'])
        for a, b in zip(outputs[name], outputs['original']):
            assert torch.equal(a, b)
