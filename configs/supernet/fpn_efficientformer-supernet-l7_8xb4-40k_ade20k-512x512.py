# Semantic FPN (ADE20K, 512x512, 40k) with the EfficientFormer supernet of L7's shape as its
# backbone, for latency-driven slimming (tools/slim.py; docs/slimming.md). Everything else is the
# L7 recipe. The released L7 ImageNet weights fill every MB4D and MB3D path L7 has; the
# architecture weights (.alpha) get no weight decay; the Gumbel-softmax temperature anneals
# from 5 to 0.5 over the training.
_base_ = '../semantic_fpn/fpn_efficientformer-l7_8xb4-40k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormerSupernet',
        arch='l7',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.pretrained}})))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.alpha': dict(decay_mult=0.)}))
custom_hooks = [dict(type='SupernetTemperatureHook', start=5.0, end=0.5)]
