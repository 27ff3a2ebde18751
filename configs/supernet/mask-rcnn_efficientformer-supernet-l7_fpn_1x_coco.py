# Mask R-CNN (COCO, 1x, 1344x800) with the EfficientFormer supernet of L7's shape as its
# backbone, for latency-driven slimming (tools/slim.py; docs/slimming.md). Everything else is the
# L7 recipe. The released L7 ImageNet weights fill every MB4D and MB3D path L7 has; the
# architecture weights (.alpha) get no weight decay; the Gumbel-softmax temperature anneals
# from 5 to 0.5 over the training.
_base_ = '../mask_rcnn/mask-rcnn_efficientformer-l7_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormerSupernet',
        arch='l7',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.pretrained}})))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.alpha': dict(decay_mult=0.)}))
custom_hooks = [dict(type='SupernetTemperatureHook', start=5.0, end=0.5)]
