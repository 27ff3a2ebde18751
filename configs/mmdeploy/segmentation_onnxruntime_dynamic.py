# mmdeploy: Semantic FPN (any mmseg segmentor) to ONNX Runtime, dynamic batch / height / width.
# The pip package of mmdeploy ships no deploy configs; this one is written for mmef's models and
# tools/deploy.py (or mmdeploy's own; see the README).
_base_ = ['./_base_/segmentation_dynamic.py', './_base_/backends/onnxruntime.py']
