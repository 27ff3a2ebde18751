# mmdeploy: instance-seg to OpenVINO (CPU) in INT8: post-training quantization of the IR with NNCF,
# calibrated on images of the model config's training set through its test pipeline
# (tools/deploy.py --calib N writes them to WORK_DIR/calib_file). Only convolutions and matrix
# products are quantized (weights per channel, activations per tensor); everything else, the
# post-processing among it (NMS, TopK, RoIAlign, box decoding, mask pasting), stays f32, and so do
# the layers that keep_float names (regular expressions over the graph's node names, which follow
# the model's module names: e.g. 'backbone/stages.3'). tools/deploy.py --sensitivity prints the
# task metric with each part of the model kept in float, to find them.
_base_ = ['./instance-seg_openvino_dynamic.py']
backend_config = dict(precision='int8', keep_float=[])
calib_config = dict(create_calib=True, calib_file='calib_data.npz', num_images=300)
