"""OpenVINO through stock mmdeploy (configs/mmdeploy/*_openvino*.py, mmef.mmdeploy_compat): the
ONNX graph ONNX Runtime runs, converted with openvino.convert_model and run by OpenVINO's CPU
plugin.

* f32 gives mmdet's / mmseg's results (Semantic FPN L1, Mask R-CNN V2-S0; ONNX Runtime's tests
  cover the other pairs of the same graph): tools/deploy.py's check on the
  export image and mmdeploy's own ``inference_model`` against mmdet's ``inference_detector`` /
  mmseg's ``inference_model`` on an image of another size and aspect. Random backbones with
  O(1) layer scales, random BN statistics and bias tables; Mask R-CNN with sharpened
  classifiers and box regressors scaled up (boxes reach the border).
* Reduced precision is judged by the task's metric (tools/deploy.py --val): INT8 of a model
  with an outlier channel in front of its classifier fails the check, and passes with that
  layer kept in float (keep_float); its sensitivity table says so.
* Errors: INT8 without calibration inputs, a keep_float pattern that matches nothing, bf16 on
  a CPU without bf16 kernels.
"""
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmef  # noqa: F401
from tool_helpers import ROOT, SEG_DEMO

pytest.importorskip('mmdeploy', reason='mmdeploy is installed by scripts/setup.sh')
pytest.importorskip('openvino', reason='OpenVINO is installed by scripts/setup.sh')
from test_mmdeploy import (DET, SEG, _image, _model_and_checkpoint,  # noqa: E402
                           _smaller_inputs)
from tools import deploy as deploy_tool  # noqa: E402

from mmef import runtimes  # noqa: E402
from mmef.export_check import (DETECTION_TOLERANCE, SEGMENTATION_TOLERANCE,  # noqa: E402
                               compare_detections, compare_segmentation)

OV = {task: osp.join(ROOT, f'configs/mmdeploy/{task}_openvino_dynamic.py')
      for task in ('segmentation', 'instance-seg')}
SEG_INT8 = osp.join(ROOT, 'configs/mmdeploy/segmentation_openvino-int8_dynamic.py')
SEG_BF16 = osp.join(ROOT, 'configs/mmdeploy/segmentation_openvino-bf16_dynamic.py')


def _mmdeploy_inference(deploy_cfg, model_cfg, xml, image):
    """mmdeploy's own API, as a user calls it on the IR tools/deploy.py wrote."""
    from mmdeploy.apis import inference_model
    with torch.no_grad():
        return inference_model(model_cfg, deploy_cfg, [xml], image, 'cpu')[0]


@pytest.mark.parametrize('arch', ['l1'])
def test_semantic_fpn_openvino_f32(arch, tmp_path, capsys):
    from mmseg.apis import inference_model, init_model
    model, ckpt, image = _model_and_checkpoint(SEG[arch], tmp_path, seed=21)
    config = osp.join(ROOT, SEG[arch])
    xml = deploy_tool.main([OV['segmentation'], config, ckpt, image, '--work-dir',
                            str(tmp_path / 'ov')])
    assert xml.endswith('end2end.xml') and osp.isfile(xml[:-4] + '.bin')
    printed = capsys.readouterr().out
    assert 'labels agree on 100.00% of pixels' in printed, printed  # the tool's check
    other = _image(tmp_path / 'other.jpg', (300, 420), seed=2)  # resized 512x717, padded
    got = _mmdeploy_inference(OV['segmentation'], config, xml, other)
    ref = inference_model(init_model(Config.fromfile(config), ckpt, device='cpu'), other)
    figures = compare_segmentation(ref, got, **SEGMENTATION_TOLERANCE)
    assert figures['passed'] and figures['logits'] <= 1e-4, figures


def _sharpen(model, ckpt):
    """Box regressors scaled up (saved to ``ckpt``): proposals and boxes move far from their
    anchors and reach the image border, where clipping decides them. (Per-class boxes and
    per-level NMS are checked against mmdet's heads on crafted inputs in
    test_postprocess.py.)"""
    with torch.no_grad():
        model.rpn_head.rpn_reg.weight.mul_(3)
        model.roi_head.bbox_head.fc_reg.weight.mul_(4)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)


@pytest.mark.parametrize('arch,seed,size', [('v2-s0', 23, (300, 420))])
def test_mask_rcnn_openvino_f32(arch, seed, size, tmp_path, capsys):
    from mmdet.apis import inference_detector, init_detector
    config = _smaller_inputs(DET[arch], tmp_path)
    model, ckpt, image = _model_and_checkpoint(config, tmp_path, seed)
    _sharpen(model, ckpt)
    xml = deploy_tool.main([OV['instance-seg'], config, ckpt, image, '--work-dir',
                            str(tmp_path / 'ov')])
    printed = capsys.readouterr().out
    assert "twins of mmdet's top 20: 20/20" in printed, printed  # the tool's check
    other = _image(tmp_path / 'other.jpg', size, seed)
    got = _mmdeploy_inference(OV['instance-seg'], config, xml, other).pred_instances
    ref = inference_detector(init_detector(Config.fromfile(config), ckpt, device='cpu'),
                             other).pred_instances
    assert len(ref) == 100 and float(ref.scores.max()) < 1.0
    assert (ref.bboxes[:, 2] >= size[1] - 0.5).any() or (ref.bboxes[:, 3] >= size[0] - 0.5).any()
    figures = compare_detections(ref, got, **DETECTION_TOLERANCE)
    assert figures['top'] == '20/20', figures
    assert figures['share'] >= 0.95 and figures['exported_share'] >= 0.95, figures
    assert figures['mask_iou'] >= 0.99, figures
    _post_processing_stays_f32(xml)


def _post_processing_stays_f32(xml):
    """The IR marks its RoI extractors and post-processing (and nothing of the model's layers)
    to keep f32, and OpenVINO's CPU plugin compiling it for bf16 runs them so."""
    ov = runtimes.import_openvino()
    model = ov.Core().read_model(xml)
    marked = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()
              if 'DisablePrecisionConversion_0' in op.get_rt_info().keys()}
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    roi_aligns = [name for name, kind in types.items() if kind == 'ROIAlign']
    assert len(roi_aligns) == 8 and not any(name in marked for name in roi_aligns)  # 4 x 2
    assert {'NonMaxSuppression', 'TopK', 'ScatterNDUpdate', 'Sqrt'} <= set(marked.values())
    for name in roi_aligns:  # what computes the RoIs is marked
        rois = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == name)
        assert rois.input(1).get_source_output().get_node().get_friendly_name() in marked
    for name, kind in types.items():  # every layer of the model is left to the hint
        if kind in runtimes.LAYER_TYPES:
            assert name not in marked, name
    assert any(name.startswith('/bbox_roi_extractor/') for name in marked)
    assert not any(name.startswith(('/backbone/', '/neck/', '/bbox_head/')) for name in marked)
    try:
        runtimes.check_openvino('bf16')
    except runtimes.RuntimeUnavailable:
        return
    executed = {}
    runtime = runtimes.compile_openvino(xml, 'bf16').get_runtime_model()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        executed.setdefault(info['layerType'].astype(str), []).append(
            (info['runtimePrecision'].astype(str), info['originalLayersNames'].astype(str)))
    assert 'bf16' in {prec for prec, _ in executed['Convolution']}  # the hint took effect
    for op in runtime.get_ordered_ops():  # RoIAlign: bf16 features, f32 RoIs
        if op.get_rt_info()['layerType'].astype(str) == 'ROIAlign':
            assert str(op.input(1).get_element_type()) == "<Type: 'float32'>", op
            assert op.input(1).get_source_output().get_node().get_rt_info()[
                'runtimePrecision'].astype(str) == 'f32'
    # two marks the plugin does not keep, both harmless: its Reshape for each level's Squeeze
    # of the batch indices (small integers, exact in bf16, converted to int next) and the
    # image's padding, which only the bf16 stem reads
    leaked = [(kind, prec, names) for kind, rows in executed.items() for prec, names in rows
              if prec == 'bf16' and names.split(',')[0] in marked
              and not (kind == 'Reshape' and names.endswith('/Squeeze'))
              and names != '/Pad']
    assert not leaked, leaked


def test_outside_layers_and_keep_in_f32(tmp_path):
    """Scopes by torch module path; ops the frontend named take the scope of what they feed;
    a scope is a layer when it holds a convolution or matrix product; the marks are written
    once into the IR and read back by OpenVINO; unknown names are refused."""
    import openvino.opset13 as ops
    ov = runtimes.import_openvino()
    x = ops.parameter([1, 4, 8, 8], np.float32, name='x')
    conv = ops.convolution(x, ops.constant(np.ones((4, 4, 1, 1), np.float32)), [1, 1],
                           [0, 0], [0, 0], [1, 1])
    conv.set_friendly_name('/neck/conv/Conv')
    helper = ops.multiply(conv, ops.constant(np.float32(2)))  # a frontend-made helper
    helper.set_friendly_name('Multiply_12')
    act = ops.relu(helper)
    act.set_friendly_name('/neck/act/Relu')
    coords = ops.sqrt(ops.abs(act))  # RoI-extractor-like scope without a layer
    coords.set_friendly_name('/bbox_roi_extractor/Sqrt')
    post = ops.reduce_max(coords, ops.constant(np.int64([2, 3])), False)
    post.set_friendly_name('/ReduceMax')
    model = ov.Model([post], [x], 'tiny')
    scopes = runtimes.layer_scopes(model)
    assert scopes['Multiply_12'] == 'neck' and scopes['/ReduceMax'] is None
    names = runtimes.outside_layers(model)
    abs_name = next(n for n in scopes if n.startswith('Abs'))
    assert set(names) == {'/bbox_roi_extractor/Sqrt', '/ReduceMax', abs_name}, names
    xml = str(tmp_path / 'tiny.xml')
    ov.save_model(model, xml)
    assert runtimes.keep_in_f32(xml, names) == 3
    assert runtimes.keep_in_f32(xml, names) == 3  # idempotent: one attribute per layer
    assert open(xml).read().count('DisablePrecisionConversion') == 3
    marked = {op.get_friendly_name() for op in ov.Core().read_model(xml).get_ordered_ops()
              if 'DisablePrecisionConversion_0' in op.get_rt_info().keys()}
    assert marked == set(names)
    with pytest.raises(ValueError, match='no layers named'):
        runtimes.keep_in_f32(xml, ['/nowhere'])


# --- reduced precision ---------------------------------------------------------------------------
def _scenes(tmp_path, seed=5):
    """Tiny ADE20K-style scenes and a demo config reading them."""
    from mmef.demo_data import make_ade_scenes
    data = str(tmp_path / 'ade')
    make_ade_scenes(data, num_train=6, num_val=3, size=(96, 128), seed=seed)
    config = tmp_path / 'seg.py'
    config.write_text(
        f'_base_ = [{SEG_DEMO!r}]\n'
        'model = dict(backbone=dict(arch=dict(_delete_=True, widths=[16, 32, 48, 64], depths=[1, 1, 2, 2], '
        'num_attn_blocks=1)), neck=dict(in_channels=[16, 32, 48, 64], out_channels=32), '
        'decode_head=dict(in_channels=[32, 32, 32, 32], channels=32))\n'
        f'train_dataloader = dict(dataset=dict(data_root={data!r}))\n'
        f'val_dataloader = dict(dataset=dict(data_root={data!r}))\n'
        f'test_dataloader = val_dataloader\n')
    return data, str(config)


def _two_class_model(config, tmp_path, seed, outlier=True):
    """A random small Semantic FPN (saved to its checkpoint). With ``outlier``, its
    classifier's input has one channel 1000x the others
    (every scale head's last BN scaled for that channel, the classifier's weights of it
    divided: the fp32 model computes the same logits). Per-tensor INT8 of that input keeps the
    outlier and rounds every other channel to zero. Two classes compete (the others' biases
    are far below), so that the labels change only at the few boundaries between two smooth
    regions and not at every near-tie of 150 random classes; the validation labels are the
    fp32 model's own."""
    model, ckpt, image = _model_and_checkpoint(config, tmp_path, seed)
    head = model.decode_head
    channel = 3
    with torch.no_grad():
        for scale_head in head.scale_heads if outlier else ():
            last = [m for m in scale_head if hasattr(m, 'bn')][-1]
            last.bn.weight[channel] *= 1000
            last.bn.bias[channel] *= 1000
        head.conv_seg.weight[:, channel] /= 1000
        head.conv_seg.bias[2:] -= 100
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return model, ckpt, image


def _own_labels(data, config, ckpt):
    """The validation annotations replaced by the PyTorch model's predictions (stored + 1: the
    config reduces label 0), so that fp32 scores mIoU 100 and every INT8 error shows."""
    import glob

    from mmseg.apis import inference_model, init_model
    model = init_model(Config.fromfile(config), ckpt, device='cpu')
    for path in sorted(glob.glob(osp.join(data, 'images/validation/*.jpg'))):
        label = inference_model(model, path).pred_sem_seg.data[0].numpy().astype(np.uint8)
        name = osp.basename(path)[:-4] + '.png'
        cv2.imwrite(osp.join(data, 'annotations/validation', name), label + 1)


def _miou_line(text):
    line = next(line for line in text.splitlines() if line.startswith('metrics on the first'))
    before, after = map(float, re.search(r'mIoU ([0-9.]+) -> ([0-9.]+)', line).groups())
    return before, after


def test_int8_accuracy_check_fails_where_a_layer_must_stay_float(tmp_path, capsys):
    data, config = _scenes(tmp_path)
    model, ckpt, image = _two_class_model(config, tmp_path, seed=24)
    _own_labels(data, config, ckpt)
    argv = [SEG_INT8, config, ckpt, image, '--val', '3', '--calib', '6']
    parts = ('backbone/stem, backbone/stages.0, backbone/stages.1, backbone/stages.2, '
             'backbone/stages.3, neck, scale_heads, conv_seg')
    # a misspelt part is refused right after the export, naming the model's parts
    with pytest.raises(SystemExit, match=rf'^--sensitivity: conv_sge: not a part of this model; '
                       rf'its parts: {re.escape(parts)}$'):
        deploy_tool.main(argv + ['--work-dir', str(tmp_path / 'typo'), '--sensitivity',
                                 'conv_seg', 'conv_sge'])
    assert not osp.exists(tmp_path / 'typo' / 'end2end.xml')
    capsys.readouterr()
    # three of the parts (each row costs a quantization and an evaluation)
    with pytest.raises(SystemExit) as failed:
        deploy_tool.main(argv + ['--work-dir', str(tmp_path / 'int8'), '--sensitivity',
                                 'scale_heads', 'conv_seg', 'backbone/stem'])
    assert failed.value.code == 1
    printed = capsys.readouterr()
    assert (f'parts of the model: {parts}; the sensitivity keeps in float backbone/stem, '
            'scale_heads, conv_seg') in printed.out
    fp32, int8 = _miou_line(printed.out)
    assert fp32 == 100.0 and int8 < 99.0, printed.out
    assert 'loses more than 1.0 points' in printed.err
    rows = {name: (int(ops), float(miou)) for name, ops, miou in
            re.findall(r'^\| (\S+) \| (\d+) \| ([0-9.]+) \|$', printed.out, re.M)}
    assert sorted(rows) == ['backbone/stem', 'conv_seg', 'scale_heads'], rows
    assert rows['conv_seg'][1] >= 99.0, rows  # the sensitivity run finds the layer
    assert rows['backbone/stem'][1] < 99.0 and rows['scale_heads'][1] < 99.0, rows
    # each row keeps only its part in float, the others stay quantized (one FakeQuantize op per
    # quantized layer's input; NNCF stores the weights as int8 constants)
    total = int(re.search(r'^\| nothing \(all INT8\) \| (\d+) \|', printed.out, re.M).group(1))
    assert rows['conv_seg'][0] == total - 1 and rows['backbone/stem'][0] == total - 2, rows

    # the user's fix, as the sensitivity row of conv_seg evaluated it: a deploy config keeping
    # that layer in float (its IR: everything else quantized)
    kept = tmp_path / 'int8' / 'sensitivity' / 'conv_seg' / 'end2end.xml'
    import openvino as ov
    ops = [op for op in ov.Core().read_model(str(kept)).get_ops()]
    quantized = {op.get_friendly_name() for op in ops if op.get_type_name() == 'FakeQuantize'}
    assert len(quantized) == total - 1
    assert not any('conv_seg' in name for name in quantized)


def test_bf16_keeps_the_metric_or_is_refused(tmp_path, capsys):
    data, config = _scenes(tmp_path, seed=6)
    model, ckpt, image = _two_class_model(config, tmp_path, seed=25, outlier=False)
    _own_labels(data, config, ckpt)
    argv = [SEG_BF16, config, ckpt, image, '--val', '3', '--work-dir', str(tmp_path / 'bf16')]
    try:
        runtimes.check_openvino('bf16')
    except runtimes.RuntimeUnavailable:
        with pytest.raises(SystemExit, match='no bf16 kernels'):
            deploy_tool.main(argv)
        return
    deploy_tool.main(argv)
    fp32, bf16 = _miou_line(capsys.readouterr().out)
    assert fp32 == 100.0 and bf16 >= 99.5


def test_int8_without_calibration_or_with_a_pattern_that_matches_nothing(tmp_path):
    from mmdeploy.apis.utils import to_backend
    from mmdeploy.utils import load_config
    data, config = _scenes(tmp_path, seed=7)
    model, ckpt, image = _model_and_checkpoint(config, tmp_path, seed=26)
    onnx = deploy_tool.main([OV['segmentation'], config, ckpt, image, '--work-dir',
                             str(tmp_path / 'f32'), '--no-check'])[:-4] + '.onnx'
    deploy_cfg = load_config(SEG_INT8)[0]
    with pytest.raises(FileNotFoundError, match='needs calibration inputs.*--calib N'):
        to_backend('openvino', [onnx], str(tmp_path / 'empty'), deploy_cfg)
    import openvino as ov
    with pytest.raises(ValueError, match=r"keep_float \['bbox_head/'\] match no quantized"):
        runtimes.quantize_openvino(ov.convert_model(onnx), [np.zeros((1, 3, 64, 64), 'f4')],
                                   keep_float=['bbox_head/'])
    with pytest.raises(ValueError, match='needs calibration inputs, got none'):
        runtimes.quantize_openvino(ov.convert_model(onnx), [])
    with pytest.raises(SystemExit, match='--sensitivity ranks the parts of an INT8 model'):
        deploy_tool.main([OV['segmentation'], config, ckpt, image, '--work-dir',
                          str(tmp_path / 'x'), '--sensitivity'])


def test_graphs_openvino_cannot_run_and_static_evaluation_are_refused(tmp_path):
    """A graph with an operator outside the ONNX standard (as mmdeploy writes some ops for its
    own runtimes) is refused naming that operator; --val / evaluate of a static export is
    refused (mmdeploy resizes every image to the static shape: not the model's metric)."""
    import onnx
    from mmdeploy.utils import load_config
    from onnx import TensorProto, helper

    from mmef.export_check import evaluate
    node = helper.make_node('MMCVRoiAlign', ['x'], ['y'], domain='mmdeploy')
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            'y', TensorProto.FLOAT, [1, 3, 8, 8])])
    path = str(tmp_path / 'custom.onnx')
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 11),
                                                      helper.make_opsetid('mmdeploy', 1)]), path)
    with pytest.raises(runtimes.RuntimeUnavailable, match='mmdeploy::MMCVRoiAlign'):
        runtimes.openvino_model(path)
    static = load_config(osp.join(ROOT, 'configs/mmdeploy/'
                                        'segmentation_onnxruntime_static-512x512.py'))[0]
    with pytest.raises(ValueError, match=r'static deploy config \(512x512\).*_dynamic.py'):
        evaluate(Config.fromfile(SEG_DEMO), str(tmp_path), 1, deploy_cfg=static,
                 backend_files=[path])


def test_deploy_tool_without_openvino_names_the_install(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'openvino', None)
    image = _image(tmp_path / 'image.jpg', (64, 64), seed=0)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': {}, 'meta': {}}, ckpt)
    with pytest.raises(SystemExit, match=r'OpenVINO is not importable.*bash scripts/setup.sh'):
        deploy_tool.main([OV['segmentation'], SEG_DEMO, str(ckpt), image, '--work-dir',
                          str(tmp_path / 'ov')])
    assert not osp.exists(tmp_path / 'ov')  # refused before anything was written
