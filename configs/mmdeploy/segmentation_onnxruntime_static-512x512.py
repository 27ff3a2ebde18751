# mmdeploy: Semantic FPN (any mmseg segmentor) to ONNX Runtime at one fixed input size, 512x512
# (input_shape is [width, height]; mmdeploy resizes every image to it). A fixed size lets the
# backbone's attention biases be folded into the graph as constants. Output: logits.
_base_ = ['./segmentation_onnxruntime_dynamic.py']

onnx_config = dict(input_shape=[512, 512], dynamic_axes=None)
