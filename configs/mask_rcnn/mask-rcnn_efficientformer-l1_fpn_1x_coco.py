# Mask R-CNN + FPN, EfficientFormer-L1, 1x schedule on COCO-2017.
# Recipe of the EfficientFormer paper: 1333x800 keep-ratio, flip, pad to 32, 2 img/GPU x 8 GPUs,
# AdamW lr 2e-4 wd 1e-4, 12 epochs, lr x0.1 after epochs 8 and 11, linear warmup 500 iterations.
# Everything else (data pipeline, heads, 1x schedule, runtime) comes from mmdet's R-50 config.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/efficientformer_adamw.py'
]

custom_imports = dict(imports=['mmef'], allow_failed_imports=False)

# ImageNet weights of the original repository (https://github.com/snap-research/EfficientFormer,
# "efficientformer_l1_300d.pth"); set the path where you saved the file, or override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/efficientformer_l1_300d.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        arch='l1',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 224, 448]))

optim_wrapper = {{_base_.efficientformer_optim_wrapper}}  # AdamW, see the base file

# checkpoints are written to a temporary file and renamed: a killed run never leaves a
# half-written checkpoint (mmef.fileio)
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='mmef_atomic')))
