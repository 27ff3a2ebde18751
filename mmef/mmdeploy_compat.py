"""Makes stock mmdeploy 1.3.1 export mmef models on torch >= 2.9 (import it before exporting).

Registered through mmdeploy's own rewriter registries, active only inside mmdeploy's export
context and only for the ONNX Runtime backend (a backend-specific rewriter takes precedence over
mmdeploy's default one); nothing installed is edited. What it fixes, and whose it is:

* torch >= 2.9 makes ``torch.onnx.export`` use the dynamo exporter by default, which needs
  ``onnxscript`` and ignores mmdeploy's rewriters: mmdeploy's call is routed to the TorchScript
  exporter (``dynamo=False``). [torch / mmdeploy]
* mmdeploy's ONNX Runtime symbolic of mmcv's RoIAlign imports
  ``torch.onnx.symbolic_opset9._cast_Long``, which torch removed: the same graph
  (``RoiAlign`` with int64 batch indices, the half-pixel shift of ``aligned`` for opset < 16) is
  written with a plain ``Cast``. [mmdeploy]
* mmseg's ``Upsample`` computes its output size with ``int(size * scale_factor)``, which a trace
  freezes at the export size, so a dynamic Semantic FPN is wrong at every other size: resized
  with ``scale_factor`` instead, which the exporter keeps dynamic. [mmseg]
* mmdeploy's ONNX Runtime segmentor resizes the logits of the padded batch
  (``test_cfg=dict(size_divisor=32)`` of the data preprocessor) to the original image, and
  arg-maxes before resizing (nearest): the ``'mmef_end2end'`` backend model
  (``codebase_config.model_type`` of ``configs/mmdeploy/segmentation_onnxruntime_dynamic.py``)
  crops the padding first and post-processes as mmseg does. [mmdeploy]

* mmdeploy's ONNX graph of two-stage detectors (Mask R-CNN) loses some of mmdet's detections:
  boxes clipped to the padded batch, a score filter and one NMS over all levels in the RPN, the
  best class's box for every class in the box head. Rewritten to post-process as mmdet does,
  with the ``'mmef_end2end'`` detector backend model feeding unpadded images (the section
  below lists each difference). [mmdeploy]

mmdeploy's rewrite of ``F.scaled_dot_product_attention`` reads ``scale`` as a divisor (torch: a
multiplier); mmef passes ``scale=1.0`` with pre-scaled queries, which both read the same, so it
needs no rewriter here. The attention biases of mmef are computed from the traced sizes, so
dynamic exports are right at other sizes (see :mod:`mmef.models.attention`).
"""
import contextlib
import logging
import os.path as osp

import torch
import torch.nn.functional as F
from mmdet.structures.bbox import get_box_tensor
from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER

ONNX_INT64 = 7  # TensorProto.INT64
# The backends that run mmdeploy's ONNX graph: ONNX Runtime reads the file, OpenVINO converts
# it (see the OpenVINO section below); both get the same rewriters, so they run one graph.
BACKENDS = ('onnxruntime', 'openvino')


def _rewriter(func_name):
    """Registers the decorated function as mmdeploy's rewriter of ``func_name`` for every
    backend of :data:`BACKENDS`."""
    def register(fn):
        for backend in BACKENDS:
            FUNCTION_REWRITER.register_rewriter(func_name, backend=backend)(fn)
        return fn
    return register


@_rewriter('torch.onnx.export')
def onnx_export__torchscript(*args, **kwargs):
    """mmdeploy's export with the TorchScript exporter, whose graph its rewriters produce."""
    ctx = FUNCTION_REWRITER.get_context()
    kwargs.setdefault('dynamo', False)
    return ctx.origin_func(*args, **kwargs)


def roi_align__onnx(g, input, rois, output_size, spatial_scale, sampling_ratio,
                           pool_mode, aligned):
    """mmcv RoIAlign as ONNX ``RoiAlign`` (rois: (K, 5) of batch index and x1 y1 x2 y2)."""
    from torch.onnx.symbolic_opset11 import add, select
    ctx = SYMBOLIC_REWRITER.get_context()
    opset = ctx.cfg.get('onnx_config', {}).get('opset_version', 11)
    index = select(g, rois, 1, g.op('Constant', value_t=torch.tensor([0], dtype=torch.long)))
    if opset < 13:
        index = g.op('Squeeze', index, axes_i=[1])
    else:
        index = g.op('Squeeze', index, g.op('Constant', value_t=torch.tensor([1])))
    batch_indices = g.op('Cast', index, to_i=ONNX_INT64)
    boxes = select(g, rois, 1, g.op('Constant', value_t=torch.tensor([1, 2, 3, 4])))
    if opset < 16:
        if aligned:  # opset 16 has coordinate_transformation_mode; before, shift by hand
            shift = torch.tensor([-0.5 / spatial_scale] * 4, dtype=torch.float32)
            boxes = add(g, boxes, g.op('Constant', value_t=shift))
        return g.op('RoiAlign', input, boxes, batch_indices, output_height_i=output_size[0],
                    output_width_i=output_size[1], spatial_scale_f=spatial_scale,
                    sampling_ratio_i=sampling_ratio, mode_s=pool_mode)
    return g.op('RoiAlign', input, boxes, batch_indices, output_height_i=output_size[0],
                output_width_i=output_size[1], spatial_scale_f=spatial_scale,
                sampling_ratio_i=sampling_ratio, mode_s=pool_mode,
                coordinate_transformation_mode_s='half_pixel' if aligned else
                'output_half_pixel')


for _backend in BACKENDS:
    SYMBOLIC_REWRITER.register_symbolic('mmcv.ops.roi_align.__self__',
                                        backend=_backend)(roi_align__onnx)


@_rewriter('mmseg.models.utils.Upsample.forward')
def upsample__dynamic(self, x):
    """mmseg's Upsample with the scale factor handed to the resize (traced sizes stay symbolic)."""
    if self.size:
        return F.interpolate(x, self.size, None, self.mode, self.align_corners)
    return F.interpolate(x, None, self.scale_factor, self.mode, self.align_corners)


def _register_segmentor():
    from mmdeploy.codebase.mmseg.deploy import segmentation_model
    from mmdeploy.utils import get_codebase_config
    from mmengine.structures import PixelData

    registry = getattr(segmentation_model, '__BACKEND_MODEL')

    @registry.register_module('mmef_end2end')
    class PaddingCroppedEnd2EndModel(segmentation_model.End2EndModel):
        """mmdeploy's ONNX Runtime segmentor, post-processing as mmseg does: the logits are
        cropped to each image's shape (the data preprocessor padded the batch,
        ``test_cfg=dict(size_divisor=32)``; mmdeploy resizes the padded logits), resized
        bilinearly to the original image (``codebase_config.align_corners``, default False, as
        the decode head's), then arg-maxed; ``seg_logits`` are kept. mmdeploy's own end2end
        model arg-maxes first and resizes the labels nearest-neighbour, which differs from
        mmseg along every class boundary. Models exported with ``with_argmax=True`` (labels
        out) and single-channel (binary) heads get mmdeploy's post-processing after the crop."""

        def pack_result(self, batch_outputs, data_samples):
            cropped = [out[..., :sample.img_shape[0], :sample.img_shape[1]]
                       for out, sample in zip(batch_outputs, data_samples)]
            codebase = get_codebase_config(self.deploy_cfg)
            if codebase.get('with_argmax', True) or batch_outputs.shape[1] == 1:
                return super().pack_result(cropped, data_samples)
            align_corners = codebase.get('align_corners', False)
            for logits, sample in zip(cropped, data_samples):
                if tuple(sample.ori_shape) != tuple(logits.shape[-2:]):
                    logits = F.interpolate(logits[None].float(), size=sample.ori_shape,
                                           mode='bilinear', align_corners=align_corners)[0]
                sample.set_data(dict(seg_logits=PixelData(data=logits),
                                     pred_sem_seg=PixelData(data=logits.argmax(0, True))))
            return list(data_samples)

    return PaddingCroppedEnd2EndModel


PaddingCroppedEnd2EndModel = _register_segmentor()


# --- Two-stage detectors (Mask R-CNN): mmdet's detections, not an approximation of them --------
#
# mmdeploy 1.3.1's ONNX graph of a two-stage detector differs from mmdet's test-time
# post-processing in three ways, each of which loses or changes some of mmdet's detections
# (measured on random-weight Mask R-CNNs with widely spread scores: mmdet's top-ranked
# detections missing from onnxruntime's output):
#
# 1. Boxes are clipped to the padded batch shape, not the image shape: the graph only sees the
#    padded tensor. Proposals and detections that reach into the padding keep their overhang,
#    which changes their RoI features, scores and boxes. [mmdeploy]
# 2. The RPN drops proposals whose objectness is below the deploy config's score_threshold
#    (mmdet keeps every proposal) and runs one NMS over all FPN levels (mmdet: one per level);
#    it does not drop the zero-size proposals mmdet's ``min_bbox_size`` removes. [mmdeploy]
# 3. The box head gives every class of a RoI the box regressed for the RoI's highest-scoring
#    class (mmdet: each class its own box), and caps each class at the deploy config's
#    max_output_boxes_per_class. [mmdeploy]
#
# Fixed here for the ONNX Runtime backend: the graph takes the resized, normalised image
# unpadded, pads it as the data preprocessor would (``pad_size_divisor``, ``pad_value``) and
# clips to the unpadded shape; the RPN and box head post-process as mmdet does (per-level NMS by
# mmcv's coordinate offsets, no score filter on proposals, ``min_bbox_size``; per-class boxes,
# score filter, per-class NMS by offsets, ``max_per_img``), with onnxruntime's NonMaxSuppression
# (through mmdeploy's ``ONNXNMSop``). The ``'mmef_end2end'`` backend model (model_type of
# configs/mmdeploy/instance-seg_onnxruntime_dynamic.py) feeds the graph each image unpadded.
# Given a batch of images padded to one shape, the graph clips all of them to that shape (as
# stock mmdeploy does); 'mmef_end2end' therefore runs the images of a batch one at a time.

_NO_SCORE = -1.0  # below every score (probabilities)


def _pad_to_divisor(x, divisor, value):
    """``x`` (B, C, H, W) padded at the bottom and right to multiples of ``divisor``, as
    mmengine's ``stack_batch`` pads; traced with the sizes symbolic."""
    if divisor <= 1:
        return x
    padded = (torch._shape_as_tensor(x)[2:] + divisor - 1) // divisor * divisor
    x = F.pad(x, (0, divisor - 1, 0, divisor - 1), value=value)
    rows = torch.arange(padded[0], device=x.device)
    cols = torch.arange(padded[1], device=x.device)
    return x.index_select(2, rows).index_select(3, cols)


def _offset_nms(boxes, scores, valid, groups, iou_threshold, max_per_img, score_threshold):
    """mmcv's ``batched_nms`` per image of a batch: NMS within each group (FPN level, class),
    by shifting each group's boxes by ``group * (largest coordinate + 1)`` as mmcv does, in
    onnxruntime's NonMaxSuppression (mmdeploy's ``ONNXNMSop``). ``boxes`` (B, N, 4), ``scores``,
    ``valid``, ``groups`` (B, N); entries not ``valid`` never suppress nor survive.
    ``score_threshold`` only speeds the NMS up (entries at or below it are not ``valid``).
    Returns per image, best first: indices into N (B, K) and their validity (B, K); K is the
    largest number kept in one image (up to ``max_per_img``; 1 when nothing is kept), the
    other images' rows are not valid."""
    from mmdeploy.mmcv.ops.nms import ONNXNMSop
    batch = scores.shape[0]
    floor = boxes.new_tensor(-1e10)  # below any box coordinate: the max runs over valid boxes
    largest = torch.where(valid[..., None], boxes, floor).flatten(1).max(1)[0]
    shifted = boxes + (groups.to(boxes) * (largest[:, None] + 1))[..., None]
    keys = torch.where(valid, scores, scores.new_tensor(_NO_SCORE))
    selected = ONNXNMSop.apply(shifted, keys[:, None], max_per_img,
                               torch.full((1,), float(iou_threshold)),
                               torch.full((1,), float(score_threshold)))
    image, index = selected[:, 0], selected[:, 2]
    # one extra entry, never valid, so that nothing below is empty
    image = torch.cat([image, image.new_zeros(1)])
    index = torch.cat([index, index.new_zeros(1)])
    key = torch.cat([keys[image[:-1], index[:-1]], keys.new_full((1,), _NO_SCORE)])
    images = torch.arange(batch, device=key.device)[:, None]
    ranked = torch.where(image[None] == images, key[None], key.new_tensor(_NO_SCORE))
    ranked, order = ranked.sort(dim=1, descending=True)
    # the columns some image fills, and at least one: mmdeploy's mask head and backend model
    # expect a row (a row that is no detection has score 0, which the backend model drops)
    filled = (ranked > _NO_SCORE).any(0)
    first = torch.arange(filled.shape[0], device=filled.device) == 0
    kept = (filled | first).nonzero()[:, 0]
    order = order.index_select(1, kept)
    return index[order], ranked.index_select(1, kept) > _NO_SCORE


@_rewriter('mmdet.models.detectors.two_stage.TwoStageDetector.forward')
def two_stage_detector__forward(self, batch_inputs, data_samples=None, mode='tensor',
                                **kwargs):
    """mmdeploy's two-stage forward on the unpadded image: padded here as the data
    preprocessor pads, boxes clipped to the unpadded shape (see above)."""
    from mmdeploy.utils import is_dynamic_shape
    ctx = FUNCTION_REWRITER.get_context()
    img_shape = torch._shape_as_tensor(batch_inputs)[2:]
    if not is_dynamic_shape(ctx.cfg):
        img_shape = [int(size) for size in img_shape]
    for sample in data_samples:
        sample.set_field(name='img_shape', value=img_shape, field_type='metainfo')
    preprocessor = self.data_preprocessor
    x = self.extract_feat(_pad_to_divisor(batch_inputs, preprocessor.pad_size_divisor,
                                          preprocessor.pad_value))
    if data_samples[0].get('proposals', None) is None:
        rpn_results_list = self.rpn_head.predict(x, data_samples, rescale=False)
    else:
        rpn_results_list = [sample.proposals for sample in data_samples]
    return self.roi_head.predict(x, rpn_results_list, data_samples, rescale=False)


@_rewriter('mmdet.models.dense_heads.rpn_head.RPNHead.predict_by_feat')
def rpn_head__predict_by_feat(self, cls_scores, bbox_preds, score_factors=None,
                              batch_img_metas=None, cfg=None, rescale=False, with_nms=True,
                              **kwargs):
    """mmdet's RPN proposals: the ``nms_pre`` best anchors per level, boxes clipped to the
    image, ``min_bbox_size``, NMS per level, the ``max_per_img`` best. Returns (proposals
    (B, K, 5) as x1 y1 x2 y2 score, labels (B, K)); rows that are no proposal (only in batches
    of images with different proposal counts) have score ``_NO_SCORE`` (-1)."""
    if rescale or not with_nms:
        raise NotImplementedError('mmef.mmdeploy_compat: RPN proposals are exported with '
                                  'rescale=False and with_nms=True only')
    cfg = self.test_cfg if cfg is None else cfg
    img_shape = batch_img_metas[0]['img_shape']
    anchors = self.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores],
                                               device=cls_scores[0].device)
    nms_pre = cfg.get('nms_pre', -1)
    boxes, scores, levels = [], [], []
    for level, (cls_score, bbox_pred, priors) in enumerate(zip(cls_scores, bbox_preds, anchors)):
        batch = cls_score.shape[0]
        cls_score = cls_score.permute(0, 2, 3, 1)
        if self.use_sigmoid_cls:
            score = cls_score.reshape(batch, -1).sigmoid()
        else:
            score = cls_score.reshape(batch, -1, 2).softmax(-1)[..., 0]
        delta = bbox_pred.permute(0, 2, 3, 1).reshape(batch, -1, self.bbox_coder.encode_size)
        if nms_pre > 0:
            score, index = score.topk(nms_pre, dim=1)  # mmdeploy's topk: at most the level size
            delta = delta.gather(1, index[..., None].expand(-1, -1, delta.shape[-1]))
            priors = priors[index]
        else:
            priors = priors[None].expand(batch, -1, -1)
        boxes.append(get_box_tensor(self.bbox_coder.decode(priors, delta, max_shape=img_shape)))
        scores.append(score)
        levels.append(torch.full_like(score, level, dtype=torch.long))
    boxes, scores, levels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels, 1)
    valid = torch.ones_like(scores, dtype=torch.bool)
    if cfg.get('min_bbox_size', -1) >= 0:
        sides = boxes[..., 2:] - boxes[..., :2]
        valid = (sides > cfg.min_bbox_size).all(-1)
    index, kept = _offset_nms(boxes, scores, valid, levels, cfg.nms.iou_threshold,
                              cfg.max_per_img, _NO_SCORE)
    boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    scores = torch.where(kept, scores.gather(1, index), scores.new_tensor(_NO_SCORE))
    return torch.cat([boxes, scores[..., None]], -1), torch.zeros_like(index)


def _detections(bbox_head, rois, cls_scores, bbox_preds, img_shape, cfg, roi_valid=None):
    """mmdet's box-head post-processing for a batch (``BBoxHead._predict_by_feat_single`` and
    ``multiclass_nms``): each class its own box, scores above ``score_thr``, NMS per class,
    the ``max_per_img`` best. ``rois`` (B, N, 5) of batch index and box; ``roi_valid`` (B, N)
    marks real RoIs. Returns dets (B, K, 5) and labels (B, K); rows that are no detection
    (only in batches) are zeros."""
    batch, num_rois = rois.shape[:2]
    classes = bbox_head.num_classes
    if bbox_head.custom_cls_channels:
        scores = bbox_head.loss_cls.get_activation(cls_scores)
    else:
        scores = F.softmax(cls_scores, dim=-1)
    scores = scores[..., :classes]
    boxes = get_box_tensor(bbox_head.bbox_coder.decode(rois[..., 1:], bbox_preds,
                                                       max_shape=img_shape))
    boxes = boxes.reshape(batch, num_rois, -1, 4).expand(-1, -1, classes, -1)
    labels = torch.arange(classes, device=scores.device).expand(batch, num_rois, classes)
    boxes, scores, labels = boxes.flatten(1, 2), scores.flatten(1), labels.flatten(1)
    valid = scores > cfg.score_thr
    if roi_valid is not None:
        valid = valid & roi_valid[..., None].expand(-1, -1, classes).flatten(1)
    index, kept = _offset_nms(boxes, scores, valid, labels, cfg.nms.iou_threshold,
                              cfg.max_per_img, cfg.score_thr)
    dets = torch.cat([boxes.gather(1, index[..., None].expand(-1, -1, 4)),
                      scores.gather(1, index)[..., None]], -1)
    return dets * kept[..., None], torch.where(kept, labels.gather(1, index),
                                                torch.zeros_like(index))


@_rewriter('mmdet.models.roi_heads.bbox_heads.bbox_head.BBoxHead.predict_by_feat')
def bbox_head__predict_by_feat(self, rois, cls_scores, bbox_preds, batch_img_metas,
                               rcnn_test_cfg=None, rescale=False):
    """mmdet's box-head post-processing on (B, N, ...) tensors (see ``_detections``)."""
    if rescale or rcnn_test_cfg is None:
        raise NotImplementedError('mmef.mmdeploy_compat: box heads are exported with '
                                  'rescale=False and a test_cfg only')
    return _detections(self, rois, cls_scores, bbox_preds, batch_img_metas[0]['img_shape'],
                       rcnn_test_cfg)


@_rewriter('mmdet.models.roi_heads.standard_roi_head.StandardRoIHead.predict_bbox')
def standard_roi_head__predict_bbox(self, x, batch_img_metas, rpn_results_list,
                                    rcnn_test_cfg, rescale=False):
    """The box head on the RPN's proposals (B, K, 5); rows that are no proposal (score < 0)
    give no detection."""
    if rescale:
        raise NotImplementedError('mmef.mmdeploy_compat: box heads are exported with '
                                  'rescale=False only')
    proposals = rpn_results_list[0]
    batch, num = proposals.shape[:2]
    index = torch.arange(batch, device=proposals.device).to(proposals)
    rois = torch.cat([index.view(-1, 1, 1) + proposals.new_zeros(batch, num, 1),
                      proposals[..., :4]], -1)
    results = self._bbox_forward(x, rois.view(-1, 5))
    cls_scores = results['cls_score'].reshape(batch, num, -1)
    bbox_preds = results['bbox_pred'].reshape(batch, num, -1)
    return _detections(self.bbox_head, rois, cls_scores, bbox_preds,
                       batch_img_metas[0]['img_shape'], rcnn_test_cfg, proposals[..., 4] >= 0)


def _register_detector():
    from mmdeploy.codebase.mmdet.deploy import object_detection_model

    registry = getattr(object_detection_model, '__BACKEND_MODEL')

    @registry.register_module('mmef_end2end')
    class UnpaddedEnd2EndModel(object_detection_model.End2EndModel):
        """mmdeploy's ONNX Runtime detector, feeding the graph each image as resized and
        normalised, without the data preprocessor's padding: the graph exported with
        mmef.mmdeploy_compat pads it itself and clips boxes to that image, as mmdet does.
        Images of a batch run one at a time, each cropped to its own ``img_shape`` (the
        preprocessor, at ``pad_size_divisor`` 1, pads a batch only to its largest image)."""

        def __init__(self, *args, data_preprocessor=None, **kwargs):
            if not isinstance(data_preprocessor, dict):
                raise TypeError("mmef_end2end: the data preprocessor must be given as a config "
                                f"dict, got {type(data_preprocessor).__name__}")
            super().__init__(*args, data_preprocessor=dict(data_preprocessor,
                                                           pad_size_divisor=1), **kwargs)

        def forward(self, inputs, data_samples, mode='predict', **kwargs):
            if mode != 'predict':
                raise ValueError(f"mmef_end2end: mode {mode!r}; deployed models only 'predict'")
            for image, sample in zip(inputs, data_samples):
                height, width = sample.img_shape[:2]
                outputs = self.predict(image[None, :, :height, :width].contiguous())
                self.postprocessing_results(outputs[0], outputs[1],
                                            outputs[2] if len(outputs) >= 3 else None,
                                            [sample])
            return data_samples

    return UnpaddedEnd2EndModel


UnpaddedEnd2EndModel = _register_detector()


# --- OpenVINO --------------------------------------------------------------------------------
#
# mmdeploy 1.3.1's OpenVINO backend does not run with current OpenVINO: it converts ONNX with the
# Model Optimizer command ``mo`` and runs the IR through ``openvino.inference_engine.IECore``,
# both removed from OpenVINO (2023-2025); it offers no INT8. And its OpenVINO rewrite of
# mmdet's ``SingleRoIExtractor`` swaps RoIAlign for OpenVINO's
# ``ExperimentalDetectronROIFeatureExtractor``, a graph of its own. Replaced here, through
# mmdeploy's backend-manager and wrapper registries:
#
# * conversion with ``openvino.convert_model`` / ``save_model`` (f32 weights) from the ONNX file
#   mmdeploy wrote with the rewriters above (the same graph ONNX Runtime runs: mmdeploy's
#   OpenVINO-only RoI extractor rewrite is unregistered);
# * ``backend_config.precision`` of the deploy config: 'f32' (set explicitly: OpenVINO runs bf16
#   by default on CPUs with bf16 kernels), 'bf16' (refused where the CPU has none), 'int8':
#   NNCF post-training quantization (mmef.runtimes.quantize_openvino) of convolutions and
#   matrix products, calibrated on the inputs in WORK_DIR/``calib_config.calib_file``
#   (written by :func:`write_calibration`; tools/deploy.py --calib), ``keep_float`` patterns of
#   node names left in float;
# * the RoI extractors' coordinate arithmetic and the post-processing functions (every
#   operation outside a scope with a convolution or matrix product except RoIAlign,
#   mmef.runtimes.outside_layers) marked in the IR to run in f32 under any precision hint:
#   OpenVINO's CPU plugin otherwise runs them in bf16 too (RoI coordinates of 256-512 px
#   spaced by 2 px; the L1 demo detector of an AMD host lost 0.9 box AP so);
# * a wrapper on ``openvino.Core`` with dynamic shapes (no reshape and recompilation per size).

_OPENVINO_ROI_EXTRACTOR = ('mmdet.models.roi_heads.roi_extractors.single_level_roi_extractor.'
                           'SingleRoIExtractor.forward')


def _unregister_openvino_roi_extractor():
    # mmdeploy registers its mmdet rewriters when it loads the codebase: load it first
    import mmdeploy.codebase.mmdet.models  # noqa: F401
    from mmdeploy.core.rewriters.rewriter_utils import BackendChecker
    from mmdeploy.utils import Backend
    records = FUNCTION_REWRITER._registry._rewrite_records
    kept = [record for record in records[_OPENVINO_ROI_EXTRACTOR]
            if not any(isinstance(checker, BackendChecker)
                       and checker.required_backend == Backend.OPENVINO
                       for checker in record['_checkers'])]
    if len(kept) == len(records[_OPENVINO_ROI_EXTRACTOR]):
        raise RuntimeError('mmef.mmdeploy_compat: mmdeploy\'s OpenVINO rewrite of '
                           'SingleRoIExtractor was not found; this mmdeploy is not 1.3.1')
    records[_OPENVINO_ROI_EXTRACTOR] = kept


_unregister_openvino_roi_extractor()


def openvino_precision(deploy_cfg):
    """``backend_config.precision`` of an OpenVINO deploy config ('f32' when absent)."""
    return deploy_cfg['backend_config'].get('precision', 'f32')


def calibration_path(deploy_cfg, work_dir):
    """Where an INT8 deploy config's calibration inputs live: WORK_DIR/``calib_file``."""
    calib = deploy_cfg.get('calib_config') or {}
    return osp.join(work_dir, calib.get('calib_file', 'calib_data.npz'))


def calibration_inputs(model_cfg, deploy_cfg, num_images, device='cpu'):
    """``num_images`` inputs of the exported graph from the model config's training images
    (evenly spaced over the training set, through the test pipeline and the data preprocessor,
    as mmdeploy's backend model feeds the graph: detection inputs unpadded, see
    ``mmef_end2end``), as float32 arrays (1, 3, H, W). The validation images stay unseen."""
    import numpy as np
    from mmdeploy.apis.utils import build_task_processor
    if num_images < 1:
        raise ValueError(f'INT8 calibration needs at least one image, got {num_images}')
    task = build_task_processor(model_cfg, deploy_cfg, device)
    dataset = task.build_dataset(model_cfg.train_dataloader.dataset)
    if len(dataset) == 0:
        raise ValueError('INT8 calibration: the model config\'s training set is empty '
                         f'({model_cfg.train_dataloader.dataset.get("data_root", "")})')
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(num_images, len(dataset))).round())
    preprocessor = task.build_data_preprocessor()
    inputs = []
    for index in picks.astype(int):
        data, x = task.create_input(dataset.get_data_info(int(index))['img_path'],
                                    data_preprocessor=preprocessor)
        if model_cfg.get('default_scope') == 'mmdet':
            height, width = data['data_samples'][0].img_shape[:2]
            x = x[..., :height, :width]
        inputs.append(x.detach().float().cpu().contiguous().numpy())
    return inputs


def write_calibration(path, inputs):
    """Writes calibration inputs (arrays of any shapes) to ``path`` (.npz), atomically."""
    import numpy as np
    from .fileio import atomic_write
    atomic_write(lambda f: np.savez(f, *inputs), path)
    return path


def read_calibration(path):
    """The arrays :func:`write_calibration` wrote, in order."""
    import numpy as np
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'OpenVINO INT8 needs calibration inputs and {path} does not exist: export with '
            'tools/deploy.py (it writes them from the model config\'s training images; '
            '--calib N chooses how many), or write them with '
            'mmef.mmdeploy_compat.write_calibration')
    with np.load(path) as data:
        return [data[f'arr_{i}'] for i in range(len(data.files))]


def model_parts(onnx_file):
    """The parts of an exported model whose layers INT8 quantizes (convolutions and matrix
    products), in graph order: {name: ``keep_float`` pattern}. Each backbone child
    ('backbone/stem', 'backbone/stages.0', ...) and each other top-level scope of the graph's
    node names, list indices merged ('neck', 'rpn_head', 'bbox_head', 'mask_head',
    'scale_heads', 'conv_seg')."""
    import re

    import onnx
    parts = {}
    for node in onnx.load(onnx_file).graph.node:
        scopes = node.name.strip('/').split('/')[:-1]
        if node.op_type not in ('Conv', 'MatMul', 'Gemm') or not scopes:
            continue
        if scopes[0] == 'backbone' and len(scopes) > 1:
            name = f'backbone/{scopes[1]}'
            parts.setdefault(name, '/' + re.escape(name) + '/')
        else:
            name = re.sub(r'\.\d+$', '', scopes[0])
            parts.setdefault(name, '/' + re.escape(name) + r'(\.\d+)?/')
    return parts


def write_openvino_ir(model, onnx_file, deploy_cfg, work_dir):
    """Writes ``model`` (the exported ``onnx_file`` as an openvino.Model,
    :func:`mmef.runtimes.openvino_model`) as an IR in ``work_dir`` named after the ONNX file
    (``end2end.xml``), at the deploy config's precision (INT8: quantized with the calibration
    inputs of ``work_dir`` and ``backend_config.keep_float``; the model given is not changed),
    its RoI extractors and post-processing marked to stay f32, after checking that it has the
    deploy config's output names; returns the IR's path. The backend's ``to_backend`` and the
    INT8 sensitivity of tools/deploy.py (one conversion, a quantization per part) write
    through it."""
    from mmdeploy.utils import get_ir_config

    from . import runtimes
    ov = runtimes.import_openvino()
    xml = osp.join(work_dir, osp.splitext(osp.basename(onnx_file))[0] + '.xml')
    if openvino_precision(deploy_cfg) == 'int8':
        model = runtimes.quantize_openvino(
            model.clone(), read_calibration(calibration_path(deploy_cfg, work_dir)),
            deploy_cfg['backend_config'].get('keep_float', ()))
    missing = set(get_ir_config(deploy_cfg).get('output_names') or ()) - {
        name for out in model.outputs for name in out.get_names()}
    if missing:
        raise RuntimeError(f'{xml}: outputs {sorted(missing)} of the deploy config are not in '
                           'the converted model')
    ov.save_model(model, xml, compress_to_fp16=False)
    # RoI extractors and post-processing stay f32 under a bf16 hint
    runtimes.keep_in_f32(xml, runtimes.outside_layers(model))
    return xml


def _register_openvino():
    from mmdeploy.backend.base import BACKEND_MANAGERS, BACKEND_WRAPPER, BaseWrapper
    from mmdeploy.backend.openvino.backend_manager import OpenVINOManager as StockManager
    from mmdeploy.utils import get_root_logger

    from . import runtimes

    @BACKEND_WRAPPER.register_module('openvino', force=True)
    class OpenVINOWrapper(BaseWrapper):
        """An OpenVINO IR compiled for the CPU at ``precision`` (mmef.runtimes
        .compile_openvino), any input shape the model allows."""

        def __init__(self, ir_model_file, output_names=None, precision='f32', threads=None):
            self.compiled = runtimes.compile_openvino(ir_model_file, precision, threads)
            self.precision = precision
            names = [out.get_any_name() for out in self.compiled.outputs]
            super().__init__(list(output_names) if output_names else names)
            self.request = self.compiled.create_infer_request()

        def forward(self, inputs):
            feed = {name: value.detach().float().cpu().contiguous().numpy()
                    for name, value in inputs.items()}
            result = self.request.infer(feed)
            return {name: torch.from_numpy(result[self.compiled.output(name)].copy())
                    for name in self.output_names}

    class OpenVINOManager(StockManager):
        """mmdeploy's OpenVINO backend on current OpenVINO (see the section's comment)."""

        @classmethod
        def build_wrapper(cls, backend_files, device='cpu', input_names=None,
                          output_names=None, deploy_cfg=None, **kwargs):
            if device != 'cpu':
                raise ValueError(f"mmef's OpenVINO backend runs on the CPU, got {device!r}")
            precision = 'f32' if deploy_cfg is None else openvino_precision(deploy_cfg)
            return OpenVINOWrapper(backend_files[0], output_names, precision)

        @classmethod
        def get_version(cls):
            return runtimes.import_openvino().__version__

        @classmethod
        def to_backend(cls, ir_files, work_dir, deploy_cfg, log_level=logging.INFO,
                       device='cpu', **kwargs):
            runtimes.check_openvino(openvino_precision(deploy_cfg))
            return [write_openvino_ir(runtimes.openvino_model(onnx_file), onnx_file,
                                      deploy_cfg, work_dir)
                    for onnx_file in ir_files]

    # replaces mmdeploy's (whose registry logs the replacement at INFO on every import)
    logger = get_root_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        BACKEND_MANAGERS.register('openvino')(OpenVINOManager)
    finally:
        logger.setLevel(level)
    return OpenVINOWrapper, OpenVINOManager


OpenVINOWrapper, OpenVINOManager = _register_openvino()


class RegistryFallbackFilter(logging.Filter):
    """Drops mmengine's 'Failed to search registry with scope "mmdet" in the "Codebases"
    registry tree ... the current "Codebases" registry in "mmdeploy" is used' warnings. mmdeploy
    builds its own objects (codebases, tasks, backend models) while the model config's scope
    (mmdet / mmseg) is the default one; its registries have no such child, and the fallback it
    announces is the registry that holds them: noise on every successful export."""

    def filter(self, record):
        message = record.getMessage()
        return not (message.startswith('Failed to search registry with scope')
                    and 'registry in "mmdeploy" is used' in message)


@contextlib.contextmanager
def quiet_registry_fallback():
    """Within the block, mmengine's loggers drop the warnings of
    :class:`RegistryFallbackFilter`; every other message passes."""
    from mmengine.logging import MMLogger
    noise = RegistryFallbackFilter()
    loggers = list(MMLogger._instance_dict.values())
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
