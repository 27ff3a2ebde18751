# Semantic FPN, EfficientFormerV2-S0, 40k iterations on ADE20K (150 classes).
# Recipe of the original V2 segmentation configs: AdamW lr 2e-4, weight decay 1e-4, poly decay,
# 40k iterations at 8 GPUs x 4 images, BatchNorm statistics kept at their ImageNet values
# (norm_eval). Everything else as the L1 config.
_base_ = './fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py'

# ImageNet weights of the original repository (https://github.com/snap-research/EfficientFormer,
# "eformer_s0_450.pth"); set the path where you saved the file, or override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/eformer_s0_450.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormerV2',
        arch='s0',
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 48, 96, 176]))
