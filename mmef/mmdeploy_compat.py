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

mmdeploy's rewrite of ``F.scaled_dot_product_attention`` reads ``scale`` as a divisor (torch: a
multiplier); mmef passes ``scale=1.0`` with pre-scaled queries, which both read the same, so it
needs no rewriter here. The attention biases of mmef are computed from the traced sizes, so
dynamic exports are right at other sizes (see :mod:`mmef.models.attention`).
"""
import torch
import torch.nn.functional as F
from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER

ONNX_INT64 = 7  # TensorProto.INT64


@FUNCTION_REWRITER.register_rewriter('torch.onnx.export', backend='onnxruntime')
def onnx_export__torchscript(*args, **kwargs):
    """mmdeploy's export with the TorchScript exporter, whose graph its rewriters produce."""
    ctx = FUNCTION_REWRITER.get_context()
    kwargs.setdefault('dynamo', False)
    return ctx.origin_func(*args, **kwargs)


@SYMBOLIC_REWRITER.register_symbolic('mmcv.ops.roi_align.__self__', backend='onnxruntime')
def roi_align__onnxruntime(g, input, rois, output_size, spatial_scale, sampling_ratio,
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


@FUNCTION_REWRITER.register_rewriter('mmseg.models.utils.Upsample.forward',
                                     backend='onnxruntime')
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
