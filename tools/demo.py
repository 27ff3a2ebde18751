"""Smoke run: builds an mmdet Mask R-CNN and an mmseg Semantic FPN on EfficientFormer-L1 and
prints their output shapes."""
import torch
from mmengine.registry import init_default_scope

import mmef  # noqa: F401


def main():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    init_default_scope('mmdet')
    neck = dict(type='FPN', in_channels=[48, 96, 224, 448], out_channels=256, num_outs=5)
    det = DET.build(dict(type='EfficientFormer', arch='l1'))
    x = torch.rand(1, 3, 256, 320)
    print('mmdet backbone:', [tuple(o.shape) for o in det.eval()(x)])
    init_default_scope('mmseg')
    seg = SEG.build(dict(type='mmef.EfficientFormer', arch='l1'))
    print('mmseg backbone:', [tuple(o.shape) for o in seg.eval()(x)])
    del neck


if __name__ == '__main__':
    main()
