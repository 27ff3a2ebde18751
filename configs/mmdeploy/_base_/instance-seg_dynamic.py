# Mask R-CNN (any mmdet instance-segmentation model), dynamic batch / height / width; the backend
# comes from _base_/backends/. Outputs: dets (x1, y1, x2, y2, score), labels, masks (per
# detection, at the RoI head's 28x28 resolution). model_type 'mmef_end2end': mmdet's
# post-processing (mmef.mmdeploy_compat).
_base_ = ['./onnx.py']

onnx_config = dict(
    output_names=['dets', 'labels', 'masks'],
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'dets': {0: 'batch', 1: 'num_dets'},
        'labels': {0: 'batch', 1: 'num_dets'},
        'masks': {0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'},
    })
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='mmef_end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
        export_postprocess_mask=False))
