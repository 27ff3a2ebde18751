# mmdeploy: instance-seg to OpenVINO (CPU) in bf16 (INFERENCE_PRECISION_HINT bf16): the f32 IR,
# run with bf16 kernels; refused on a CPU without them (AVX-512 BF16 or AMX).
_base_ = ['./instance-seg_openvino_dynamic.py']
backend_config = dict(precision='bf16')
