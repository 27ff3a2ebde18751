# CPU demo: the real L1 Semantic FPN config trained from scratch on the synthetic ADE20K-style
# scenes (mmef.demo_data.make_ade_scenes; tools/demo.py writes them to data/demo/ade_scenes).
# Overrides: data root, image scale (crops), batch, schedule (from scratch, no ImageNet weights
# here, so a higher lr), evaluation interval. Dataset class, 150-class head and IoUMetric are
# the real ones.
_base_ = '../semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py'

data_root = 'data/demo/ade_scenes'
crop_size = (128, 128)
image_scale = (512, 128)  # (long side limit, short side): whole images are ~128-160 px
max_iters = 300
batch_size = 4

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None))  # no ImageNet weights: the backbone starts from scratch

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# fused AdamW: one kernel instead of a per-tensor loop, ~7x faster optimizer steps on CPU
optim_wrapper = dict(optimizer=dict(lr=1e-3, fused=True))
param_scheduler = [
    dict(type='PolyLR', eta_min=0., power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=150)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
