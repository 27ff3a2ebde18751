# What both mmdeploy configs share: the TorchScript ONNX export (opset 11, one input image
# tensor) for the ONNX Runtime backend. output_names / dynamic_axes / codebase_config per task.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=11,
    save_file='end2end.onnx',
    input_names=['input'],
    input_shape=None,
    optimize=False)
backend_config = dict(type='onnxruntime')
