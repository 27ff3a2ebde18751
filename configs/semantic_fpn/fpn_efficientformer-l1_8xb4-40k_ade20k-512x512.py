# Semantic FPN, EfficientFormer-L1, 40k iterations on ADE20K (150 classes).
# Recipe of the EfficientFormer paper: 512x512 crops, 4 img/GPU x 8 GPUs, AdamW lr 2e-4 wd 1e-4,
# poly decay (power 0.9), 40k iterations. The model, data pipeline and runtime are mmseg's
# Semantic FPN pieces (the same as its fpn_r50_4xb4-160k_ade20k-512x512.py, with the 40k schedule).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py',
    '../_base_/efficientformer_adamw.py'
]

custom_imports = dict(imports=['mmef'], allow_failed_imports=False)

# ImageNet weights of the original repository (https://github.com/snap-research/EfficientFormer,
# "efficientformer_l1_300d.pth"); set the path where you saved the file, or override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/efficientformer_l1_300d.pth'

crop_size = (512, 512)
model = dict(
    # whole-image test: images (2048x512 keep-ratio) are padded to a multiple of 32, and the
    # prediction is cropped back to the image
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        arch='l1',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 224, 448]),
    decode_head=dict(num_classes=150))

train_dataloader = dict(batch_size=4)

optim_wrapper = {{_base_.efficientformer_optim_wrapper}}  # AdamW, see the base file

# checkpoints are written to a temporary file and renamed: a killed run never leaves a
# half-written checkpoint (mmef.fileio)
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='mmef_atomic')))
