# Semantic FPN, EfficientFormerV2-S2, 40k iterations on ADE20K (recipe: see the S0 config).
_base_ = './fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py'

# ImageNet weights of the original repository ("eformer_s2_450.pth"); see the README
pretrained = 'checkpoints/eformer_s2_450.pth'

model = dict(
    backbone=dict(arch='s2', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 144, 288]))
