# Mask R-CNN + FPN, EfficientFormer-L3, 1x schedule on COCO-2017 (recipe: see the L1 config).
_base_ = './mask-rcnn_efficientformer-l1_fpn_1x_coco.py'

# ImageNet weights of the original repository ("efficientformer_l3_300d.pth"); see the README
pretrained = 'checkpoints/efficientformer_l3_300d.pth'

model = dict(
    backbone=dict(arch='l3', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))
