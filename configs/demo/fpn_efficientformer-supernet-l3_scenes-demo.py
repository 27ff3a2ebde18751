# CPU demo of the slimming search (tools/demo.py --slim): the supernet demo config with a
# supernet of L3's shape, so that slimming has room to reach L1's latency.
_base_ = './fpn_efficientformer-supernet-l1_scenes-demo.py'

model = dict(backbone=dict(arch='l3'), neck=dict(in_channels=[64, 128, 320, 512]))
