# Mask R-CNN + FPN, EfficientFormerV2-S1, 1x schedule on COCO-2017 (recipe: see the S0 config).
_base_ = './mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'

# ImageNet weights of the original repository ("eformer_s1_450.pth"); see the README
pretrained = 'checkpoints/eformer_s1_450.pth'

model = dict(
    backbone=dict(arch='s1', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 48, 120, 224]))
