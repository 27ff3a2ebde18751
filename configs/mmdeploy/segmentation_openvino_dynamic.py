# mmdeploy: segmentation to OpenVINO (CPU), f32, dynamic batch / height / width: the ONNX Runtime
# config's graph converted to OpenVINO's IR (end2end.xml / .bin) by mmef.mmdeploy_compat.
_base_ = ['./_base_/segmentation_dynamic.py', './_base_/backends/openvino.py']
