"""Stock mmdeploy 1.3.1 exports our Semantic FPN and Mask R-CNN configs (V1 and V2) to ONNX Runtime
(tools/deploy.py, configs/mmdeploy/, mmef.mmdeploy_compat). Dynamic shapes, traced at the size the
model's test pipeline gives the 256x352 image (Semantic FPN 512x704, Mask R-CNN 800x1120):
onnxruntime equals PyTorch at two other shapes (Semantic FPN: one of them the transposed export
grid), and mmdeploy's own inference path (backend model, test_step) equals mmseg's / mmdet's on
an image that is resized (and, for Semantic FPN, padded). Static shapes (the shipped static
configs at input_shape 256x352): equal at that shape, and the graph refuses any other. Backbone
weights are random with O(1) layer scales, random BN statistics and bias tables, so that a wrong
attention scale, a frozen bias or a frozen upsample size cannot hide; detection heads have
widely spread scores, so that wrong RoI features cannot hide either."""
import copy
import os.path as osp
import re
import subprocess
import sys

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

from mmef.export_check import DETECTION_TOLERANCE, compare_detections, match_detections

mmdeploy = pytest.importorskip('mmdeploy', reason='mmdeploy is installed by scripts/setup.sh')
from tools import deploy as deploy_tool  # noqa: E402

SEG = {'l1': 'configs/semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py',
       'v2-s0': 'configs/semantic_fpn/fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py'}
DET = {'l1': 'configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
       'v2-s0': 'configs/mask_rcnn/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'}
DEPLOY_SEG = osp.join(ROOT, 'configs/mmdeploy/segmentation_onnxruntime_dynamic.py')
DEPLOY_DET = osp.join(ROOT, 'configs/mmdeploy/instance-seg_onnxruntime_dynamic.py')
STATIC_SEG = osp.join(ROOT, 'configs/mmdeploy/segmentation_onnxruntime_static-512x512.py')
STATIC_DET = osp.join(ROOT, 'configs/mmdeploy/instance-seg_onnxruntime_static-800x1344.py')
REGISTRY_NOISE = 'Failed to search registry with scope "mmseg" in the "Codebases" registry tree'
EXPORT_SIZE, OTHER_SIZES = (256, 352), [(352, 256), (192, 320)]  # image size; other shapes


def rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _model_and_checkpoint(config, tmp_path, seed):
    torch.manual_seed(seed)  # the heads' own init_weights draw from the global generator
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
    if cfg.default_scope == 'mmdet':
        # sharpened classifiers (the RPN's objectness x10, the box head's classes x30 over
        # their initialisation), so that scores spread widely with the RoI features and which
        # proposals and detections win depends on them
        with torch.no_grad():
            model.rpn_head.rpn_cls.weight.mul_(10)
            model.roi_head.bbox_head.fc_cls.weight.mul_(30)
    model.eval()
    ckpt = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return model, ckpt, _image(tmp_path / 'image.jpg', EXPORT_SIZE, seed)


def _image(path, size, seed):
    """A random (H, W) = ``size`` image file; returns its path."""
    cv2.imwrite(str(path), (np.random.RandomState(seed).rand(*size, 3) * 255).astype('uint8'))
    return str(path)


def _exported(deploy_cfg, config, tmp_path, seed, *options):
    """A random model of ``config`` and its checkpoint, exported by tools/deploy.py with
    ``deploy_cfg`` on a 256x352 image (which the tool checks the export on, unless ``options``
    say ``--no-check``): (model, checkpoint, image, ONNX file)."""
    model, ckpt, image = _model_and_checkpoint(config, tmp_path, seed)
    path = deploy_tool.main([deploy_cfg, osp.join(ROOT, config), ckpt, image, '--work-dir',
                             str(tmp_path / 'onnx'), *options])
    return model, ckpt, image, path


def _static_config(base, tmp_path):
    """The shipped static config at EXPORT_SIZE (input_shape is [width, height])."""
    path = tmp_path / 'deploy_static.py'
    height, width = EXPORT_SIZE
    path.write_text(f'_base_ = [{base!r}]\nonnx_config = dict(input_shape=[{width}, {height}])\n')
    return str(path)


def _assert_static(session):
    """The graph's input has the export shape, and onnxruntime refuses the transposed one."""
    assert session.get_inputs()[0].shape == [1, 3, *EXPORT_SIZE]
    with pytest.raises(Exception, match='(?i)dimension|shape'):
        session.run(None, {'input': np.zeros((1, 3, *EXPORT_SIZE[::-1]), np.float32)})


def _optimised_ops(path):
    """Operator types of the graph onnxruntime runs (its basic, hardware-independent
    optimisations, constant folding among them, applied when a session loads the file)."""
    import onnx
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = path + '.optimised.onnx'
    ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def _session(path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _check_semantic_fpn(model, session, sizes):
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = model.encode_decode(x, [dict(img_shape=size)])  # logits at the input size
        out = session.run(None, {'input': x.numpy()})[0]
        assert out.shape == tuple(ref.shape) == (1, 150, *size)
        assert rel(out, ref.numpy()) <= 1e-4, size


def _task(deploy_cfg, model_cfg):
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    return build_task_processor(*load_config(model_cfg, deploy_cfg), 'cpu')


def _backend_and_pytorch(task, path, ckpt, image):
    """mmdeploy's inference path on ``image`` (test pipeline, test_step, results on the
    original image): its backend model on the ONNX file, and its PyTorch model (mmdet's /
    mmseg's, with the backbone deployed by mmdeploy)."""
    inputs, _ = task.create_input(image)
    backend = task.build_backend_model([path], task.update_data_preprocessor)
    with torch.no_grad():
        return backend.test_step(inputs)[0], task.build_pytorch_model(ckpt).test_step(inputs)[0]


def _traced_shape(task, model, image):
    """The input size mmdeploy traces on: ``image`` through the test pipeline and the model's
    data preprocessor (resize, then padding)."""
    data, _ = task.create_input(image)
    return tuple(model.data_preprocessor(data, False)['inputs'].shape[-2:])


@pytest.mark.parametrize('arch', sorted(SEG))
def test_semantic_fpn_dynamic_onnxruntime(arch, tmp_path, capsys):
    model, ckpt, image, path = _exported(DEPLOY_SEG, SEG[arch], tmp_path, 6,
                                         *(['--no-check'] if arch != 'l1' else []))
    if arch == 'l1':
        assert 'labels agree on 100.00% of pixels' in capsys.readouterr().out  # the tool's check
    task = _task(DEPLOY_SEG, osp.join(ROOT, SEG[arch]))
    traced = _traced_shape(task, model, image)
    assert traced == (512, 704)
    _check_semantic_fpn(model, _session(path), [traced[::-1], (192, 320)])

    # mmdeploy's inference path (our 'mmef_end2end' backend model) against mmseg's, on an image
    # that the pipeline resizes to 512x717 and the preprocessor pads to 512x736
    other = _image(tmp_path / 'other.jpg', (300, 420), seed=1)
    assert _traced_shape(task, model, other) == (512, 736)
    got, ref = _backend_and_pytorch(task, path, ckpt, other)
    logits, ref_logits = got.seg_logits.data.numpy(), ref.seg_logits.data.numpy()
    assert logits.shape == ref_logits.shape == (150, 300, 420)
    assert rel(logits, ref_logits) <= 1e-4
    agree = (got.pred_sem_seg.data == ref.pred_sem_seg.data).float().mean().item()
    assert agree >= 0.999, agree  # argmax: only near-ties may flip


@pytest.mark.parametrize('arch', sorted(SEG))
def test_semantic_fpn_static_onnxruntime(arch, tmp_path):
    model, ckpt, image, path = _exported(_static_config(STATIC_SEG, tmp_path), SEG[arch],
                                         tmp_path, 8, '--no-check')
    session = _session(path)
    _assert_static(session)
    _check_semantic_fpn(model, session, [EXPORT_SIZE])
    # at a fixed size the attention biases are constants once onnxruntime has loaded the file
    ops = _optimised_ops(path)
    assert 'Conv' in ops and not ops & {'Shape', 'Range'}, ops


def test_mmdeploy_own_api_gets_the_compat_through_custom_imports(tmp_path):
    """mmdeploy's own tools/deploy.py imports mmdeploy, then loads the model config, whose
    custom_imports import mmef: mmef then registers mmef.mmdeploy_compat itself, and mmdeploy's
    torch2onnx exports without anything imported by hand (without the compat it fails)."""
    model, ckpt, image = _model_and_checkpoint(SEG['v2-s0'], tmp_path, seed=10)
    work = str(tmp_path / 'onnx')
    script = (
        'import sys\n'
        'from mmdeploy.apis import torch2onnx  # first, as in mmdeploy/tools/deploy.py\n'
        'assert "mmef" not in sys.modules\n'
        f'torch2onnx({image!r}, {work!r}, "end2end.onnx", '
        f'{_static_config(STATIC_SEG, tmp_path)!r}, {osp.join(ROOT, SEG["v2-s0"])!r}, '
        f'{ckpt!r}, "cpu")\n'
        'assert "mmef.mmdeploy_compat" in sys.modules\n')
    run = subprocess.run([sys.executable, '-c', script], check=True, cwd=str(tmp_path),
                         capture_output=True, text=True)
    _check_semantic_fpn(model, _session(osp.join(work, 'end2end.onnx')), [EXPORT_SIZE])
    # mmdeploy's own API announces its registry fallback (tools/deploy.py keeps it quiet)
    assert REGISTRY_NOISE in run.stdout + run.stderr


def test_deploy_tool_command_line(tmp_path):
    """tools/deploy.py as a user runs it: exports, checks (the figures printed), exit 0, and
    none of mmdeploy's registry-fallback warnings."""
    model, ckpt, image = _model_and_checkpoint(SEG['l1'], tmp_path, seed=11)
    run = subprocess.run([sys.executable, osp.join(ROOT, 'tools/deploy.py'), DEPLOY_SEG,
                          osp.join(ROOT, SEG['l1']), ckpt, image, '--work-dir',
                          str(tmp_path / 'onnx')], cwd=str(tmp_path), capture_output=True,
                         text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert f"wrote {tmp_path / 'onnx' / 'end2end.onnx'}" in run.stdout
    line = next(line for line in run.stdout.splitlines() if line.startswith('check on'))
    logits = float(re.search(r'logits ([0-9.e+-]+) relative', line).group(1))
    labels = float(re.search(r'labels agree on ([0-9.]+)%', line).group(1))
    assert logits <= 1e-4 and labels >= 99.9, line
    assert REGISTRY_NOISE not in output and 'Failed to search registry' not in output


def test_deploy_tool_check_fails_beyond_tolerance(tmp_path, capsys):
    """A static export (mmdeploy resizes every image to 512x512; mmseg keeps the aspect ratio
    of the 256x352 image, 512x704) does not give mmseg's logits: the check says so and exits 1,
    keeping the file (--no-check skips the check: the static tests export with it)."""
    model, ckpt, image = _model_and_checkpoint(SEG['v2-s0'], tmp_path, seed=12)
    argv = [STATIC_SEG, osp.join(ROOT, SEG['v2-s0']), ckpt, image, '--work-dir',
            str(tmp_path / 'onnx')]
    with pytest.raises(SystemExit) as failed:
        deploy_tool.main(argv)
    assert failed.value.code == 1
    printed = capsys.readouterr()
    logits = float(re.search(r'logits ([0-9.e+-]+) relative', printed.out).group(1))
    assert logits > 1e-2, printed.out
    assert 'does not give what mmdet / mmseg give' in printed.err
    assert 'static input shape (512x512)' in printed.err and '--no-check' in printed.err
    assert osp.isfile(tmp_path / 'onnx' / 'end2end.onnx')


def _rewritten_pytorch(model, x):
    """What the exported graph computes, in PyTorch: mmdeploy's rewritten model run inside its
    rewriter context (dets and labels; its eager mask path is not the exported one)."""
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import load_config
    from mmdet.structures import DetDataSample
    deploy_cfg = load_config(DEPLOY_DET)[0]
    size = tuple(x.shape[-2:])
    sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size,
                                         batch_input_shape=size, scale_factor=(1., 1.)))
    patched = patch_model(copy.deepcopy(model), cfg=deploy_cfg, backend='onnxruntime')
    with RewriterContext(cfg=deploy_cfg, backend='onnxruntime', opset=11), torch.no_grad():
        dets, labels, _ = patched(x, [sample], mode='predict')
    return dets.numpy(), labels.numpy()


def _mask_probabilities(model, x, boxes, labels):
    """mmdet's own RoI extractor and mask head on the given boxes: (K, 28, 28) probabilities."""
    with torch.no_grad():
        feats = model.extract_feat(x)
        extractor = model.roi_head.mask_roi_extractor
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
        logits = model.roi_head.mask_head(extractor(feats[:extractor.num_inputs], rois))
        return logits[torch.arange(len(boxes)), torch.from_numpy(labels)].sigmoid().numpy()


def _check_mask_rcnn(model, session, sizes):
    """onnxruntime's detections against mmdeploy's rewritten PyTorch model's at ``sizes``:
    each of PyTorch's top 20 and 95 % of all have a twin (mmef.export_check: same label, box
    IoU > 0.99, score within 1e-3), and the twins' 28x28 mask probabilities are mmdet's mask
    head's on PyTorch's boxes within 1e-3."""
    from mmengine.structures import InstanceData
    for size in sizes:
        x = torch.randn(1, 3, *size)
        dets, labels, masks = session.run(None, {'input': x.numpy()})
        ref_dets, ref_labels = _rewritten_pytorch(model, x)
        got, ref = [InstanceData(bboxes=torch.from_numpy(d[0, :, :4]),
                                 scores=torch.from_numpy(d[0, :, 4]), labels=torch.from_numpy(l[0]))
                    for d, l in ((dets, labels), (ref_dets, ref_labels))]
        assert len(ref) >= 20 and len(got) == len(ref), (len(got), len(ref))
        twins = match_detections(ref, got)
        assert (twins[:20] >= 0).all() and (twins >= 0).float().mean() >= 0.95, twins
        sides = ref.bboxes[:20, 2:] - ref.bboxes[:20, :2]
        assert (sides > 8).all(), ref.bboxes[:20]  # real boxes (anchors of 32 px and up)
        ref_masks = _mask_probabilities(model, x, ref_dets[0, :20, :4], ref_labels[0, :20])
        assert np.abs(masks[0, twins[:20].numpy()] - ref_masks).max() <= 1e-3


def _smaller_inputs(config, tmp_path):
    """``config`` with its test-time images resized to at most 667x400 (cheaper; still another
    size than the export's and the image's): a config file written under ``tmp_path``."""
    cfg = Config.fromfile(osp.join(ROOT, config))
    for pipeline in (cfg.test_pipeline, cfg.test_dataloader.dataset.pipeline,
                     cfg.val_dataloader.dataset.pipeline):
        for step in pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (667, 400)
    path = str(tmp_path / 'smaller.py')
    cfg.dump(path)
    return path


DET_CASES = [('v2-s0', 0, (445, 414)), ('l1', 2, (420, 300)), ('v2-s0', 3, (333, 517))]


@pytest.mark.parametrize('arch,seed,size', DET_CASES)
def test_mask_rcnn_dynamic_onnxruntime(arch, seed, size, tmp_path, capsys):
    """Three random models exported at 800x1120; mmdeploy's inference path (backend model:
    boxes rescaled and masks pasted onto the original image) against mmdet's
    inference_detector on an image of another size and aspect (445x414 is resized to 860x800,
    which the data preprocessor pads to 864x800: detections that reach into the padding are
    clipped to the image by mmdet). The first is also checked by tools/deploy.py on its export
    image, and its graph against mmdeploy's rewritten PyTorch model at another shape."""
    first = (arch, seed, size) == DET_CASES[0]
    config = osp.join(ROOT, DET[arch]) if first else _smaller_inputs(DET[arch], tmp_path)
    model, ckpt, image, path = _exported(DEPLOY_DET, config, tmp_path, seed,
                                         *([] if first else ['--no-check']))
    task = _task(DEPLOY_DET, config)
    if first:
        printed = capsys.readouterr().out
        assert "twins of mmdet's top 20: 20/20" in printed, printed
        assert _traced_shape(task, model, image) == (800, 1120)
        _check_mask_rcnn(model, _session(path), OTHER_SIZES[:1])

    from mmdet.apis import inference_detector, init_detector
    other = _image(tmp_path / 'other.jpg', size, seed)
    inputs, _ = task.create_input(other)
    backend = task.build_backend_model([path], task.update_data_preprocessor)
    with torch.no_grad():
        got = backend.test_step(inputs)[0].pred_instances
    cfg = Config.fromfile(config)
    ref = inference_detector(init_detector(cfg, ckpt, device='cpu'), other).pred_instances
    # what the comparison rests on: scores below float32's 1.0, so no two detections tie (a
    # saturated softmax ties, and NMS may then keep either of two overlapping boxes)
    assert len(ref) == 100 and float(ref.scores.max()) < 1.0
    assert ref.masks.shape[-2:] == got.masks.shape[-2:] == size
    figures = compare_detections(ref, got, **DETECTION_TOLERANCE)
    assert figures['top'] == '20/20', figures
    assert figures['share'] >= 0.95 and figures['exported_share'] >= 0.95, figures
    assert figures['mask_iou'] >= 0.99, figures


def test_mask_rcnn_static_onnxruntime(tmp_path):  # V2: the attention constants of both kinds
    model, ckpt, image, path = _exported(_static_config(STATIC_DET, tmp_path), DET['v2-s0'],
                                         tmp_path, 9, '--no-check')
    session = _session(path)
    _assert_static(session)
    _check_mask_rcnn(model, session, [EXPORT_SIZE])


def test_backend_evaluation_gives_mmdet_ap(tmp_path):
    """tools/test.py --backend: the exported demo Mask R-CNN evaluated through mmdeploy's
    backend model gives the AP that the PyTorch model gives, with the same CocoMetric. So that
    AP is high and lost or moved detections would lower it, the validation annotations are the
    PyTorch model's own confident detections (boxes and masks) on 4 shapes images."""
    import json

    import pycocotools.mask as mask_util
    from mmdet.apis import inference_detector, init_detector
    from mmengine.registry import init_default_scope

    from mmef.demo_data import make_coco_shapes
    from tool_helpers import DET_DEMO, as_argv, det_options
    from tools import test as test_tool

    data = str(tmp_path / 'coco')
    make_coco_shapes(data, num_train=1, num_val=4, size=(96, 128), seed=3)
    model, ckpt, _ = _model_and_checkpoint(DET_DEMO, tmp_path, seed=4)
    ann_file = osp.join(data, 'annotations/instances_val2017.json')
    with open(ann_file) as f:
        coco = json.load(f)
    init_default_scope('mmdet')
    detector = init_detector(Config.fromfile(DET_DEMO), ckpt, device='cpu')
    annotations = []
    for image in coco['images']:
        found = inference_detector(detector, osp.join(data, 'val2017', image['file_name']))
        found = found.pred_instances[found.pred_instances.scores > 0.5][:5]
        for box, label, mask in zip(found.bboxes.tolist(), found.labels.tolist(),
                                    found.masks.numpy()):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image['id'], iscrowd=0,
                category_id=coco['categories'][label]['id'], area=float(mask.sum()),
                bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]],
                segmentation=dict(size=rle['size'], counts=rle['counts'].decode())))
    assert len(annotations) >= 8, len(annotations)
    coco['annotations'] = annotations
    with open(ann_file, 'w') as f:
        json.dump(coco, f)

    options = as_argv(det_options(data))
    reference = test_tool.main([DET_DEMO, ckpt, '--work-dir', str(tmp_path / 'pt'), *options])
    first = osp.join(data, 'val2017', coco['images'][0]['file_name'])
    onnx = deploy_tool.main([DEPLOY_DET, DET_DEMO, ckpt, first, '--work-dir',
                             str(tmp_path / 'onnx'), '--no-check'])
    exported = test_tool.main([DET_DEMO, '--backend', onnx, '--deploy-config', DEPLOY_DET,
                               '--work-dir', str(tmp_path / 'ort'), *options])
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert reference[key] >= 0.5, reference
        assert abs(exported[key] - reference[key]) <= 0.001, (key, exported, reference)


def _demo_export(tmp_path, name, ckpt, image, score_thr):
    """The demo Mask R-CNN with the box head's score_thr set, exported (dynamic) with ckpt."""
    from tool_helpers import DET_DEMO
    config = tmp_path / f'{name}.py'
    config.write_text(f'_base_ = [{DET_DEMO!r}]\n'
                      f'model = dict(test_cfg=dict(rcnn=dict(score_thr={score_thr})))\n')
    return deploy_tool.main([DEPLOY_DET, str(config), ckpt, image, '--work-dir',
                             str(tmp_path / name), '--no-check'])


def test_mask_rcnn_graph_batches_and_empty_results(tmp_path):
    """The graph on a batch of two images gives each image's own detections (rows that are no
    detection, where the other image has more, are zeros), and with nothing above the score
    threshold one zero row (which mmdeploy's backend model drops)."""
    from tool_helpers import DET_DEMO
    model, ckpt, image = _model_and_checkpoint(DET_DEMO, tmp_path, seed=4)
    session = _session(_demo_export(tmp_path, 'some', ckpt, image, 0.999))
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0)).numpy()
    x[1] *= 0.1  # fewer confident detections
    dets, labels, masks = session.run(None, {'input': x})
    counts = []
    for i in range(2):
        one = session.run(None, {'input': x[i:i + 1]})
        count = one[0].shape[1]
        counts.append(count)
        np.testing.assert_allclose(dets[i, :count], one[0][0], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(labels[i, :count], one[1][0])
        assert np.abs(masks[i, :count] - one[2][0]).max() <= 1e-4
        assert (dets[i, count:] == 0).all()
    assert dets.shape[1] == max(counts) and min(counts) < max(counts), counts  # rows padded

    session = _session(_demo_export(tmp_path, 'none', ckpt, image, 1.0))
    dets, labels, masks = session.run(None, {'input': x})
    assert dets.shape == (2, 1, 5) and (dets == 0).all() and masks.shape == (2, 1, 28, 28)
