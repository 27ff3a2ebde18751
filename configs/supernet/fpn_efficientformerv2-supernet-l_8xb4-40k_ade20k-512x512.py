# Semantic FPN (ADE20K, 512x512, 40k) with the slimmable EfficientFormerV2 supernet of L's shape
# as its backbone, for the V2 search (tools/slim.py; docs/slimming.md). Everything else is the
# V2-L recipe; the released V2-L ImageNet weights initialise the whole supernet (the same keys).
# Each iteration trains the smallest sub-network, 2 random ones and the largest (the sandwich
# rule, mmef.sandwich). The recipe keeps the backbone's BatchNorms frozen (norm_eval), so every
# sub-network normalises with the ImageNet statistics; the neck's and head's are recalibrated
# per sub-network before it is scored.
_base_ = '../semantic_fpn/fpn_efficientformerv2-l_8xb4-40k_ade20k-512x512.py'

model = dict(backbone=dict(type='EfficientFormerV2Supernet'))
train_cfg = dict(type='SandwichIterBasedTrainLoop', num_random=2)
