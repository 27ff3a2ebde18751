# CPU demo: the real L1 Mask R-CNN config trained from scratch on the synthetic COCO-style shapes
# dataset (mmef.demo_data.make_coco_shapes; tools/demo.py writes it to data/demo/coco_shapes).
# Overrides: data root and classes, image scale, batch, schedule, evaluation interval, and the
# number of proposals / sampled RoIs per image (COCO's 2000 / 512 are sized for scenes with dozens
# of objects; these images hold at most 5, and on CPU the RoI heads' cost grows with that number).
# Schedule, from scratch (no ImageNet weights here), measured on this demo (docs/usage.md):
# - AdamW lr 1e-3 for the backbone but 2.5e-4 for neck, RPN and RoI heads: heads at 1e-3 broke
#   training (box AP50 0.11), everything at 2.5e-4 or 1.25e-4 gave 0.34, the split 0.37;
# - batch 4 instead of 2: same AP50 at 3/4 of the time per image (fixed per-step costs);
# - fused AdamW: the same update in one kernel instead of a loop over 225 tensors: 0.02 s instead
#   of 0.14 s per step on 2 cores, where one training image costs ~0.1 s (batch 2 vs 4 step times);
# - 16 epochs (800 steps), x0.1 for the last 2: box AP50 0.37 at 6 epochs, 0.49 at 12, 0.57 at 16.
_base_ = '../mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py'

data_root = 'data/demo/coco_shapes/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(220, 20, 60), (0, 130, 230), (0, 160, 60), (250, 170, 30)])
image_scale = (128, 128)
max_epochs = 16
batch_size = 4

model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet weights: the backbone starts from scratch
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=16))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(custom_keys=dict(  # merged with the base's bias_table / .gamma keys
        neck=dict(lr_mult=0.25), rpn_head=dict(lr_mult=0.25), roi_head=dict(lr_mult=0.25))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[max_epochs - 2], gamma=0.1)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
