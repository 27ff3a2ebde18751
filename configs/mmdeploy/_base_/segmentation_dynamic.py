# Semantic FPN (any mmseg segmentor), dynamic batch / height / width; the backend comes from
# _base_/backends/. Output: logits at the input size.
_base_ = ['./onnx.py']

onnx_config = dict(
    output_names=['output'],
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'output': {0: 'batch', 2: 'height', 3: 'width'},
    })
codebase_config = dict(
    type='mmseg',
    task='Segmentation',
    with_argmax=False,
    # mmef's backend model (mmef.mmdeploy_compat): crops the test-time padding off the logits,
    # resizes them to the original image bilinearly (align_corners as the decode head's: False)
    # and arg-maxes, as mmseg does; mmdeploy's 'end2end' resizes padded, arg-maxed labels
    align_corners=False,
    model_type='mmef_end2end')
