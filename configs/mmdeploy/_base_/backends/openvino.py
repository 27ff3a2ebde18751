# OpenVINO's CPU plugin (mmef.mmdeploy_compat converts the ONNX file with openvino.convert_model;
# stock mmdeploy 1.3.1 calls the Model Optimizer `mo`, which OpenVINO no longer ships).
# precision: 'f32' (INFERENCE_PRECISION_HINT f32: OpenVINO's default on CPUs with bf16 kernels is
# bf16), 'bf16' (refused on a CPU without them), or 'int8' (post-training quantization with
# NNCF, calibrated on calib_config's images; what is not quantized runs in f32).
backend_config = dict(type='openvino', precision='f32')
