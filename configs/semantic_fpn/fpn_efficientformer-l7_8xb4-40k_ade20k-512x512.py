# Semantic FPN, EfficientFormer-L7, 40k iterations on ADE20K (recipe: see the L1 config).
_base_ = './fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py'

# ImageNet weights of the original repository ("efficientformer_l7_300d.pth"); see the README
pretrained = 'checkpoints/efficientformer_l7_300d.pth'

model = dict(
    backbone=dict(arch='l7', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
