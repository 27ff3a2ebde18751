# mmdeploy: Mask R-CNN (any mmdet instance-segmentation model) to ONNX Runtime, dynamic batch /
# height / width. The pip package of mmdeploy ships no deploy configs; this one is written for
# mmef's models and tools/deploy.py (or mmdeploy's own; see the README).
_base_ = ['./_base_/instance-seg_dynamic.py', './_base_/backends/onnxruntime.py']
