# CPU demo of the V2 search (tools/demo.py --slim --family v2): the Semantic FPN demo config
# (synthetic ADE20K-style scenes, from scratch) with a slimmable EfficientFormerV2 supernet of
# S2's widths and depths, MLP ratio 4 in every block (so each block may choose 3 or 4), trained
# by the sandwich rule with one random sub-network per iteration besides the smallest and the
# largest (the full configs use 2; one keeps the demo within its CPU budget). BatchNorms train
# (from scratch: no norm_eval).
_base_ = './fpn_efficientformer-l1_scenes-demo.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormerV2Supernet',
        arch=dict(widths=(32, 64, 144, 288), depths=(4, 4, 12, 8), num_attn_blocks=4,
                  mlp_ratios=((4, ) * 4, (4, ) * 4, (4, ) * 12, (4, ) * 8)),
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 144, 288]))
train_cfg = dict(type='SandwichIterBasedTrainLoop', num_random=1)
