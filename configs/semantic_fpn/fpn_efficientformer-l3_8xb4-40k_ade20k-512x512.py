# Semantic FPN, EfficientFormer-L3, 40k iterations on ADE20K (recipe: see the L1 config).
_base_ = './fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py'

# ImageNet weights of the original repository ("efficientformer_l3_300d.pth"); see the README
pretrained = 'checkpoints/efficientformer_l3_300d.pth'

model = dict(
    backbone=dict(arch='l3', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))
