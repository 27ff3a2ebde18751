# Mask R-CNN + FPN, EfficientFormerV2-S2, 1x schedule on COCO-2017 (recipe: see the S0 config).
_base_ = './mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'

# ImageNet weights of the original repository ("eformer_s2_450.pth"); see the README
pretrained = 'checkpoints/eformer_s2_450.pth'

model = dict(
    backbone=dict(arch='s2', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 144, 288]))
