# CPU demo of the slimming search: the Semantic FPN demo config (synthetic ADE20K-style scenes,
# from scratch) with an EfficientFormer supernet of L1's shape as its backbone.
_base_ = './fpn_efficientformer-l1_scenes-demo.py'

model = dict(
    backbone=dict(_delete_=True, type='EfficientFormerSupernet', arch='l1', init_cfg=None))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.alpha': dict(decay_mult=0.)}))
custom_hooks = [dict(type='SupernetTemperatureHook', start=5.0, end=0.5)]
