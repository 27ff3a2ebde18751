# Mask R-CNN (COCO, 1x, 1344x800) with the slimmable EfficientFormerV2 supernet of L's shape as
# its backbone, for the V2 search (tools/slim.py; docs/slimming.md). Everything else is the V2-L
# recipe; the released V2-L ImageNet weights initialise the whole supernet (the same keys). Each
# iteration trains the smallest sub-network, 2 random ones and the largest (the sandwich rule,
# mmef.sandwich).
_base_ = '../mask_rcnn/mask-rcnn_efficientformerv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(type='EfficientFormerV2Supernet'))
train_cfg = dict(type='SandwichEpochBasedTrainLoop', num_random=2)
