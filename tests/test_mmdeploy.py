"""Stock mmdeploy 1.3.1 exports our Semantic FPN and Mask R-CNN configs (V1 and V2) to ONNX Runtime
with dynamic shapes (tools/deploy.py, configs/mmdeploy/, mmef.mmdeploy_compat); onnxruntime equals
PyTorch at two shapes other than the export shape, one of them the transposed grid. Weights are
random with O(1) layer scales, random BN statistics and bias tables, so that a wrong attention
scale, a frozen bias or a frozen upsample size cannot hide."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope

import mmef  # noqa: F401
from tool_helpers import ROOT
from weights import randomize

mmdeploy = pytest.importorskip('mmdeploy', reason='mmdeploy is installed by scripts/setup.sh')
from tools import deploy as deploy_tool  # noqa: E402

SEG = {'l1': 'configs/semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py',
       'v2-s0': 'configs/semantic_fpn/fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py'}
DET = {'l1': 'configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
       'v2-s0': 'configs/mask_rcnn/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'}
DEPLOY_SEG = osp.join(ROOT, 'configs/mmdeploy/segmentation_onnxruntime_dynamic.py')
DEPLOY_DET = osp.join(ROOT, 'configs/mmdeploy/instance-seg_onnxruntime_dynamic.py')
EXPORT_SIZE, OTHER_SIZES = (256, 352), [(352, 256), (192, 320)]


def rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _model_and_checkpoint(config, tmp_path, seed):
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if cfg.default_scope == 'mmdet':
            from mmdet.registry import MODELS
        else:
            from mmseg.registry import MODELS
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    randomize(model.backbone, seed=seed)
    model.eval()
    ckpt = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    image = str(tmp_path / 'image.jpg')
    cv2.imwrite(image, (np.random.RandomState(seed).rand(*EXPORT_SIZE, 3) * 255).astype('uint8'))
    return cfg, model, ckpt, image


def _session(path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('arch', sorted(SEG))
def test_semantic_fpn_dynamic_onnxruntime(arch, tmp_path):
    cfg, model, ckpt, image = _model_and_checkpoint(SEG[arch], tmp_path, seed=6)
    path = deploy_tool.main([DEPLOY_SEG, osp.join(ROOT, SEG[arch]), ckpt, image, '--work-dir',
                             str(tmp_path / 'onnx')])
    session = _session(path)
    for size in OTHER_SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = model.encode_decode(x, [dict(img_shape=size)])  # logits at the input size
        out = session.run(None, {'input': x.numpy()})[0]
        assert out.shape == tuple(ref.shape) == (1, 150, *size)
        assert rel(out, ref.numpy()) <= 1e-4, size
