# What every mmef deploy config shares: the TorchScript ONNX export (opset 11, one input image
# tensor). ONNX Runtime runs this file; OpenVINO converts the same file to its IR, so the two
# backends run one graph. output_names / dynamic_axes / codebase_config per task (_base_/*.py).
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=11,
    save_file='end2end.onnx',
    input_names=['input'],
    input_shape=None,
    optimize=False)
