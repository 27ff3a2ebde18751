"""The backbone inside real mmdet / mmseg models, built through their registries from configs."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

import mmef
from mmef.models import EfficientFormer

L1_WIDTHS = [48, 96, 224, 448]


def upstream_config(package, rel_path):
    root = osp.dirname(__import__(package).__file__)
    return Config.fromfile(osp.join(root, '.mim', 'configs', rel_path))


@pytest.mark.parametrize('scope, registry', [('mmdet', 'mmdet.registry'),
                                             ('mmseg', 'mmseg.registry')])
@pytest.mark.parametrize('type_name', ['EfficientFormer', 'mmef.EfficientFormer'])
def test_registry_builds_backbone(scope, registry, type_name):
    import importlib
    models = importlib.import_module(registry).MODELS
    init_default_scope(scope)
    backbone = models.build(dict(type=type_name, arch='l3', out_indices=(1, 2)))
    assert type(backbone) is EfficientFormer
    assert backbone.out_indices == (1, 2) and backbone.widths[0] == 64


def test_misspelt_option_is_rejected_by_the_registry():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    with pytest.raises(TypeError, match='frozen_stage'):
        MODELS.build(dict(type='EfficientFormer', frozen_stage=1))


def test_mask_rcnn_l1_train_and_inference_step():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    init_default_scope('mmdet')
    cfg = upstream_config('mmdet', '_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(type='EfficientFormer', arch='l1')
    cfg.model.neck.in_channels = L1_WIDTHS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone, EfficientFormer)

    data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 192, 256), (3, 160, 224)],
                          num_items=[3, 2], num_classes=80, with_mask=True)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    packed = model.data_preprocessor(data, True)
    losses = model(**packed, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    before = model.backbone.stages[3].attn_blocks[0].attn.qkv.weight.detach().clone()
    loss.backward()
    assert model.backbone.stages[3].attn_blocks[0].attn.bias_table.grad is not None
    optim.step()
    assert not torch.equal(before, model.backbone.stages[3].attn_blocks[0].attn.qkv.weight)

    model.eval()
    with torch.no_grad():
        results = model.test_step(data)
    assert len(results) == 2
    for result in results:
        inst = result.pred_instances
        assert inst.bboxes.shape[1] == 4 and len(inst.scores) == len(inst.labels)
        assert inst.masks.shape[-2:] == tuple(result.ori_shape)


def test_semantic_fpn_l1_train_and_inference_step():
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    cfg = upstream_config('mmseg', '_base_/models/fpn_r50.py')
    cfg.model.backbone = dict(type='EfficientFormer', arch='l1')
    cfg.model.neck.in_channels = L1_WIDTHS
    cfg.model.decode_head.num_classes = 150
    cfg.model.data_preprocessor.size = (128, 128)
    cfg.model.pop('pretrained', None)
    cfg.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()

    inputs, samples = [], []
    for h, w in [(128, 128), (128, 128)]:
        inputs.append(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
        samples.append(sample)
    data = dict(inputs=inputs, data_samples=samples)
    model.train()
    packed = model.data_preprocessor(data, True)
    loss, _ = model.parse_losses(model(**packed, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.stem.conv1.conv.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model.test_step(data)
    assert results[0].pred_sem_seg.data.shape == (1, 128, 128)
    assert results[0].seg_logits.data.shape == (150, 128, 128)


def test_package_exports():
    assert mmef.EfficientFormer is EfficientFormer
    assert isinstance(mmef.__version__, str)
