# mmdeploy: Mask R-CNN (any mmdet instance-segmentation model) to ONNX Runtime at one fixed input
# size, 800x1344 (input_shape is [width, height]; mmdeploy resizes every image to it, without
# keeping its aspect ratio). Outputs as in instance-seg_onnxruntime_dynamic.py.
_base_ = ['./instance-seg_onnxruntime_dynamic.py']

onnx_config = dict(input_shape=[1344, 800], dynamic_axes=None)
