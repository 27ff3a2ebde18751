"""The demo that learns: trains Mask R-CNN and Semantic FPN on EfficientFormer-L1, on CPU.

``make demo`` runs this. It
1. writes two small synthetic datasets in the real formats (mmef.demo_data, deterministic from
   --seed): COCO-2017-style shapes under data/demo/coco_shapes and ADE20K-style scenes under
   data/demo/ade_scenes (skipped when the files for the same settings are already there);
2. trains configs/demo/*.py (the real L1 configs with small data, scale and schedule) from
   scratch with mmengine's Runner, evaluating with mmdet's CocoMetric (bbox + segm) and mmseg's
   IoUMetric, unmodified;
3. reloads each saved checkpoint through the public inference APIs and saves a picture of
   predictions on validation images to outputs/demo/;
4. prints the metrics next to the targets (box AP50 >= 0.5, mask AP50 >= 0.4, mIoU >= 0.6).

Usage: python tools/demo.py [--only det|seg] [--threads 2] [--seed 0] [--strict] [--arch v2-s0]

``--arch`` trains another backbone with the same recipe: 'l1' (default, the configs as they are),
'l3', 'l7', or EfficientFormerV2 'v2-s0', 'v2-s1', 'v2-s2', 'v2-l' (from scratch, so its
BatchNorms train: norm_eval off). The measured targets are for L1.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TASKS = {
    'det': dict(
        config='configs/demo/mask-rcnn_efficientformer-l1_fpn_shapes-demo.py',
        data='data/demo/coco_shapes',
        work_dir='work_dirs/demo/det',
        make=dict(fn='make_coco_shapes', num_train=200, num_val=40),
        val_images='val2017/*.jpg',
        metrics=[('box AP50', 'coco/bbox_mAP_50', 1.0, 0.5),
                 ('mask AP50', 'coco/segm_mAP_50', 1.0, 0.4),
                 ('box AP', 'coco/bbox_mAP', 1.0, None),
                 ('mask AP', 'coco/segm_mAP', 1.0, None)],
        picture='outputs/demo/mask_rcnn_predictions.jpg'),
    'seg': dict(
        config='configs/demo/fpn_efficientformer-l1_scenes-demo.py',
        data='data/demo/ade_scenes',
        work_dir='work_dirs/demo/seg',
        make=dict(fn='make_ade_scenes', num_train=200, num_val=40),
        val_images='images/validation/*.jpg',
        # IoUMetric reports percentages
        metrics=[('mIoU', 'mIoU', 0.01, 0.6), ('aAcc', 'aAcc', 0.01, None)],
        picture='outputs/demo/semantic_fpn_predictions.jpg'),
}


def make_data(task, seed):
    """Writes the task's dataset unless the same settings were written before."""
    from mmef import demo_data
    # through json, so that tuples compare equal to the lists the stamp file holds
    spec = json.loads(json.dumps(dict(TASKS[task]['make'], seed=seed, version=1)))
    root = TASKS[task]['data']
    stamp = osp.join(root, 'mmef_demo.json')
    if osp.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == spec:
                print(f'[demo] {root}: up to date')
                return
        shutil.rmtree(root)
    t0 = time.time()
    kwargs = {k: v for k, v in spec.items() if k not in ('fn', 'version')}
    getattr(demo_data, spec['fn'])(root, **kwargs)
    with open(stamp, 'w') as f:
        json.dump(spec, f)
    print(f'[demo] wrote {root} in {time.time() - t0:.1f} s')


def backbone_setting(arch):
    """The ``model.backbone`` and neck ``in_channels`` overrides for ``--arch``."""
    from mmef.models import EfficientFormer, EfficientFormerV2
    cls, name = (EfficientFormerV2, arch[3:]) if arch.startswith('v2-') else \
        (EfficientFormer, arch)
    if name not in cls.arch_settings:
        raise ValueError(f'--arch {arch!r}: choose from {ARCHS}')
    backbone = dict(_delete_=True, type=cls.__name__, arch=name, out_indices=(0, 1, 2, 3),
                    init_cfg=None)
    return backbone, list(cls.arch_settings[name]['widths'])


ARCHS = ('l1', 'l3', 'l7', 'v2-s0', 'v2-s1', 'v2-s2', 'v2-l')


def train(task, seed, arch='l1'):
    """Trains and validates the task's demo config; returns (metrics, checkpoint, seconds)."""
    from mmef.engine import build_runner, load_config
    cfg, _ = load_config(TASKS[task]['config'])
    if arch != 'l1':
        backbone, widths = backbone_setting(arch)
        cfg.merge_from_dict(dict(model=dict(backbone=backbone, neck=dict(in_channels=widths))))
        cfg.work_dir = TASKS[task]['work_dir'] + f'_{arch}'
    else:
        cfg.work_dir = TASKS[task]['work_dir']
    cfg.randomness = dict(seed=seed)
    t0 = time.time()
    runner = build_runner(cfg)
    runner.train()
    seconds = time.time() - t0
    hub = runner.message_hub
    metrics = {}
    for _, key, _, _ in TASKS[task]['metrics']:
        scalar = hub.log_scalars.get(f'val/{key}')
        if scalar is None:
            raise RuntimeError(f'validation did not report {key!r}; check val_interval in '
                               f'{TASKS[task]["config"]}')
        metrics[key] = float(scalar.current())
    with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    return metrics, checkpoint, seconds, cfg


def picture(task, checkpoint, num_images=6, cfg=None, arch='l1'):
    """Predictions of the saved checkpoint (public inference API) on validation images."""
    from mmef.engine import build_inferencer, draw_prediction
    inferencer, scope = build_inferencer(cfg or TASKS[task]['config'], checkpoint, 'cpu')
    pattern = osp.join(TASKS[task]['data'], TASKS[task]['val_images'])
    images = sorted(glob.glob(pattern))
    if not images:
        raise FileNotFoundError(f'no validation images match {pattern}')
    tiles = []
    tmp = osp.join(TASKS[task]['work_dir'], 'vis')
    for image in images[:num_images]:
        out = draw_prediction(inferencer, scope, image, osp.join(tmp, osp.basename(image)),
                              score_thr=0.5)
        tiles.append(cv2.resize(cv2.imread(out), (256, 256), interpolation=cv2.INTER_AREA))
    cols = min(3, len(tiles))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)  # fill the last row
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    path = TASKS[task]['picture']
    if arch != 'l1':  # next to the L1 picture, not over it
        path = f'{osp.splitext(path)[0]}_{arch}.jpg'
    os.makedirs(osp.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.vstack(rows))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', choices=sorted(TASKS), help='run one task')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=0, help='data and training seed')
    parser.add_argument('--strict', action='store_true',
                        help='exit with status 1 when a metric misses its target')
    parser.add_argument('--arch', default='l1', choices=ARCHS,
                        help='backbone to train (default l1: the demo configs as they are)')
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the demo configs use paths relative to the repository
    torch.set_num_threads(args.threads)
    start = time.time()
    report = []
    for task in ([args.only] if args.only else ['det', 'seg']):
        make_data(task, args.seed)
        metrics, checkpoint, seconds, cfg = train(task, args.seed, args.arch)
        path = picture(task, checkpoint, cfg=cfg, arch=args.arch)
        report.append((task, metrics, seconds, path))
    total = time.time() - start
    print('\n[demo] results (computed on the synthetic validation sets)')
    missed = 0
    for task, metrics, seconds, path in report:
        print(f'  {osp.basename(TASKS[task]["config"])} ({args.arch}): trained + evaluated in '
              f'{seconds:.0f} s, predictions: {path}')
        for name, key, scale, target in TASKS[task]['metrics']:
            value = metrics[key] * scale
            verdict = '' if target is None else \
                f'  target >= {target}: {"met" if value >= target else "MISSED"}'
            missed += target is not None and value < target
            print(f'    {name:10s} {value:.3f}{verdict}')
    print(f'  total wall time {total:.0f} s with {args.threads} torch threads')
    return 1 if missed and args.strict else 0


if __name__ == '__main__':
    sys.exit(main())
