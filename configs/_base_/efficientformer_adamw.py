# AdamW of the EfficientFormer dense recipes (paper: lr 2e-4, weight decay 1e-4), with no weight
# decay for the attention-bias tables, the layer scales (.gamma) and all norm layers.
# It has its own name because the upstream mmdet / mmseg bases already define optim_wrapper and
# mmengine refuses a key that two bases define; a config takes it with
#     optim_wrapper = {{_base_.efficientformer_optim_wrapper}}
# and `_delete_=True` replaces the upstream (SGD) optimizer instead of merging into it.
efficientformer_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={'bias_table': dict(decay_mult=0.), '.gamma': dict(decay_mult=0.)}))
