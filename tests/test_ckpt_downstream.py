"""Original Mask R-CNN (COCO) and Semantic FPN (ADE20K) files convert and load into our configs.

For L1 and L3: an mmdet / mmseg model is built from our config, its neck and head weights plus an
original-format backbone with random non-trivial weights (tests/_original_ref.py) are saved as an
mmcv 1.x runner checkpoint, exactly shaped like the released files. The file is converted, and
a fresh model built from the same config with the ``--cfg-options`` line of the converter's
summary (what the command line prints) loads it with mmengine's ``load_checkpoint(strict=True)``
(what ``load_from`` / ``tools/test.py`` use): no missing or unexpected keys. The backbone then
reproduces the independent plain re-computation of the original forward at 256x320 and 250x330.
"""
import argparse
import os.path as osp

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import load_checkpoint

import mmef  # noqa: F401
from _original_ref import make_original_backbone, original_forward, save_mmcv1_checkpoint
from mmef.checkpoint.convert import convert_checkpoint, format_summary
from mmef.checkpoint.keys import to_mmef

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'det': 'configs/mask_rcnn/mask-rcnn_efficientformer-{}_fpn_1x_coco.py',
    'seg': 'configs/semantic_fpn/fpn_efficientformer-{}_8xb4-40k_ade20k-512x512.py',
}
RESOLUTION = {'det': 25, 'seg': 16}
RTOL = 1e-5


def _build(config, cfg_options=None, seed=0):
    cfg = Config.fromfile(osp.join(ROOT, config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    torch.manual_seed(seed)
    return MODELS.build(cfg.model)


def _parse_cfg_options(line):
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options'] + line.split()).cfg_options


def _rel(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('arch', ['l1', 'l3'])
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_original_downstream_file_loads_and_reproduces(tmp_path, task, arch):
    config, resolution = CONFIGS[task].format(arch), RESOLUTION[task]
    source_model = _build(config, seed=1)
    heads = {k: v for k, v in source_model.state_dict().items() if not k.startswith('backbone.')}
    assert heads and all(k.split('.')[0] in ('neck', 'rpn_head', 'roi_head', 'decode_head')
                         for k in heads)
    backbone = make_original_backbone(arch, resolution, seed=21)
    src = tmp_path / f'{task}_{arch}_original.pth'
    save_mmcv1_checkpoint(src, {**{'backbone.' + k: v for k, v in backbone.items()}, **heads})
    del source_model

    dst = tmp_path / f'{task}_{arch}_mmef.pth'
    text = format_summary(convert_checkpoint(src, dst))  # what the command line prints
    assert f'use with the mmef config {osp.basename(config)} ' in text
    assert f'python tools/test.py CONFIG {dst} --cfg-options ' in text
    line = text.split('--cfg-options ')[1].splitlines()[0]
    options = _parse_cfg_options(line)
    assert options == {'model.backbone.attn_bias_mode': 'official',
                       'model.backbone.attn_bias_resolution': resolution,
                       'model.backbone.init_cfg': None}

    model = _build(config, options, seed=2)
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)  # raises on any mismatch
    state = model.state_dict()
    expected = {'backbone.' + k: v for k, v in to_mmef(backbone).items()}
    expected.update(heads)
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key

    model.eval()
    for hw in [(256, 320), (250, 330)]:
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(hw[1]))
        with torch.no_grad():
            ref = original_forward(backbone, x)
            outs = model.backbone(x)
        assert len(outs) == 4
        for level, (out, r) in enumerate(zip(outs, ref)):
            assert _rel(out, r) <= RTOL, (hw, level, _rel(out, r))
