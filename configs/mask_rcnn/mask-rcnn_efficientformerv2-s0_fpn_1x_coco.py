# Mask R-CNN + FPN, EfficientFormerV2-S0, 1x schedule on COCO-2017.
# Recipe of the original V2 detection configs: AdamW lr 2e-4 with weight decay 0.05 (V1: 1e-4),
# 1x schedule, BatchNorm statistics kept at their ImageNet values (norm_eval). Everything else
# (data, heads, schedule, no decay for bias tables / layer scales / norms) as the L1 config.
_base_ = './mask-rcnn_efficientformer-l1_fpn_1x_coco.py'

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

optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
