# Mask R-CNN + FPN, EfficientFormer-L7, 1x schedule on COCO-2017 (recipe: see the L1 config).
_base_ = './mask-rcnn_efficientformer-l1_fpn_1x_coco.py'

# ImageNet weights of the original repository ("efficientformer_l7_300d.pth"); see the README
pretrained = 'checkpoints/efficientformer_l7_300d.pth'

model = dict(
    backbone=dict(arch='l7', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
