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
       python tools/demo.py --slim [--family v1|v2] [--threads 2] [--seed 0]

``--arch`` trains another backbone with the same recipe: 'l1' (default, the configs as they are),
'l3', 'l7', or EfficientFormerV2 'v2-s0', 'v2-s1', 'v2-s2', 'v2-l' (from scratch, so its
BatchNorms train: norm_eval off). The measured targets are for L1.

``--slim`` runs the latency-driven search end to end on the generated scenes (docs/slimming.md):
measures the deployed L1 at 512x512 on this CPU (the budget), trains a supernet of L3's shape,
slims it to that budget with the shipped 512x512 latency table (docs/latency/data, measured on
an AMD EPYC with AVX2, 2 threads: it says when this CPU is another), trains the found
sub-network and L1 the same way from scratch, and reports both mIoU and both measured
latencies (also in work_dirs/demo/slim/report.json). ``--slim --family v2`` does the same for
EfficientFormerV2: a slimmable supernet of S2's shape trained by the sandwich rule, slimmed to
V2-S0's latency with docs/latency/data/lut_v2_512x512_torch_s0-s2.json (an Intel Xeon with
AMX, 2 threads), each candidate's BatchNorm statistics recalibrated; the found sub-network and
S0 trained the same way (work_dirs/demo/slim_v2/report.json).
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
    from mmef.engine import load_config
    cfg, _ = load_config(TASKS[task]['config'])
    if arch != 'l1':
        backbone, widths = backbone_setting(arch)
        cfg.merge_from_dict(dict(model=dict(backbone=backbone, neck=dict(in_channels=widths))))
        cfg.work_dir = TASKS[task]['work_dir'] + f'_{arch}'
    else:
        cfg.work_dir = TASKS[task]['work_dir']
    return train_config(cfg, task, seed)


def train_config(cfg, task, seed):
    """Trains and validates ``cfg`` (a loaded config with its work_dir set); returns (metrics,
    checkpoint, seconds, cfg)."""
    from mmef.engine import build_runner
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


SLIM = {
    # the V1 search: a supernet of L3's shape slimmed to L1's latency
    'v1': dict(config='configs/demo/fpn_efficientformer-supernet-l3_scenes-demo.py',
               table='docs/latency/data/lut_v1_512x512_torch.json', size=(512, 512),
               work_dir='work_dirs/demo/slim', val_batches=8, calib_batches=0,
               reference='l1', reference_arch=('v1', 'l1')),
    # the V2 search: a supernet of S2's shape (MLP ratio 4 everywhere) slimmed to S0's latency
    'v2': dict(config='configs/demo/fpn_efficientformerv2-supernet-s2_scenes-demo.py',
               table='docs/latency/data/lut_v2_512x512_torch_s0-s2.json', size=(512, 512),
               work_dir='work_dirs/demo/slim_v2', val_batches=4, calib_batches=1,
               reference='v2-s0', reference_arch=('v2', 's0')),
}


# how far the measured budget may be from the table's prediction of the same reference on the
# table's own host: beyond the table's target error (10 % worst) and a margin for drift
BUDGET_TOLERANCE = 0.25


def slim_budget(measured_ms, predicted_ms, foreign, name='L1', family='v1'):
    """The budget to slim to: the reference network (``name``) as measured here, when the table
    was built on this host and predicts it within :data:`BUDGET_TOLERANCE`. A table of another
    host predicts in that host's milliseconds, so the budget is then the reference's prediction
    (the same model, in the table's units; the subnet and the reference are still both measured
    here at the end). On the table's own host a measurement far from the prediction is a busy
    machine (or a stale table): refused."""
    ratio = measured_ms / predicted_ms
    if abs(ratio - 1) <= BUDGET_TOLERANCE:
        return measured_ms
    if foreign:
        print(f'[slim] the table is of another host ({ratio:.2f}x its prediction here): slimming '
              f'to {name} as the table predicts it, {predicted_ms:.1f} ms in that host\'s units')
        return predicted_ms
    raise SystemExit(
        f'[slim] error: {name} measured {measured_ms:.1f} ms here, {ratio:.2f}x what the table '
        f'predicts for it ({predicted_ms:.1f} ms) on this same host: the machine is busy (or the '
        'table is stale). Stop the other jobs and run again, or rebuild the table '
        f'(tools/latency_table.py build --family {family} --size 512 512)')


def slim_demo(seed, threads, family='v1'):
    """The search end to end (see the module docstring); returns the report dict."""
    import statistics

    from mmef.engine import load_config
    from mmef.latency import LatencyTable
    from mmef.latency.measure import measure_models
    from mmef.latency.slim import slim_task
    from mmef.runtimes import cpu_info, flush_denormals, keep_freed_memory, runtime_info
    spec = SLIM[family]
    ref, ref_name = spec['reference'], spec['reference'].upper()
    make_data('seg', seed)
    work = spec['work_dir']
    table = LatencyTable.load(spec['table'])
    keep_freed_memory()  # as the table was measured
    if table.meta.get('denormals') == 'flushed':
        flush_denormals()
    here = runtime_info('torch')
    table.check(input_size=spec['size'], allocator=here['allocator'],
                denormals=here['denormals'])
    here, there = cpu_info(), table.meta['cpu']
    foreign = (here['model'], sorted(here['flags'])) != (there['model'], sorted(there['flags'])) \
        or threads != table.meta['threads']
    if foreign:
        print(f"[slim] NOTE: the table was measured on {there['model']} {there['flags']} with "
              f"{table.meta['threads']} threads; this is {here['model']} {here['flags']} with "
              f'{threads}: its predictions are for that machine (build one here: '
              f'tools/latency_table.py build --family {family} --size 512 512)')

    def measured(models):
        times = measure_models(models, spec['size'], 'torch', threads=threads, runs=15)
        return {label: statistics.median(ms) for label, ms in times.items()}

    ref_family, ref_arch = spec['reference_arch']
    budget = measured({ref: spec['reference_arch']})[ref]
    predicted = table.predict(ref_arch)
    print(f'[slim] budget: deployed {ref_name} at 512x512 measured {budget:.1f} ms here '
          f'(table predicts {predicted:.1f} ms)')
    budget = slim_budget(budget, predicted, foreign, ref_name, family)
    cfg, _ = load_config(spec['config'])
    cfg.work_dir = osp.join(work, 'supernet')
    supernet_metrics, supernet_ckpt, supernet_s, _ = train_config(cfg, 'seg', seed)
    t0 = time.time()
    steps = slim_task(spec['config'], supernet_ckpt, spec['table'], budget,
                      osp.join(work, 'search'), val_batches=spec['val_batches'],
                      input_size=spec['size'], calib_batches=spec['calib_batches'])
    search_s = time.time() - t0
    arch = steps[-1]['backbone_arch']
    results = {}
    for name in ('subnet', ref):
        if name == 'subnet':
            cfg, _ = load_config(osp.join(work, 'search', 'subnet_config.py'))
        else:
            cfg, _ = load_config(TASKS['seg']['config'])
            if ref != 'l1':
                backbone, widths = backbone_setting(ref)
                cfg.merge_from_dict(dict(model=dict(backbone=backbone,
                                                    neck=dict(in_channels=widths))))
        cfg.model.backbone.init_cfg = None  # both from scratch, the same recipe
        cfg.custom_hooks = []
        cfg.work_dir = osp.join(work, name)
        metrics, _, seconds, _ = train_config(cfg, 'seg', seed)
        results[name] = dict(mIoU=metrics['mIoU'], aAcc=metrics['aAcc'], train_s=seconds)
    latency = measured({'subnet': (family, arch), ref: spec['reference_arch']})
    report = dict(
        family=family, budget_ms=budget, table=table.describe(), found_arch=arch,
        predicted_ms=steps[-1]['latency_ms'], steps=len(steps) - 1,
        actions={a: sum(s['action'] == a for s in steps[1:])
                 for a in sorted({s['action'] for s in steps[1:]})},
        supernet=dict(mIoU=supernet_metrics['mIoU'], train_s=supernet_s), search_s=search_s,
        subnet=dict(results['subnet'], measured_ms=latency['subnet']),
        reference=dict(results[ref], name=ref, measured_ms=latency[ref],
                       predicted_ms=predicted))
    with open(osp.join(work, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    print('\n[slim] results (generated scenes; latencies of deployed backbones at 512x512, '
          f'torch, {threads} threads, medians of 15 runs, measured together)')
    print(f"  budget ({ref_name} measured first): {budget:.1f} ms; found in {len(steps) - 1} "
          f"steps ({search_s:.0f} s; {report['actions']}): {arch}, predicted "
          f"{steps[-1]['latency_ms']:.1f} ms")
    for name, r in (('subnet', report['subnet']), (ref, report['reference'])):
        print(f"  {name:6s} mIoU {r['mIoU']:.2f}  measured {r['measured_ms']:.1f} ms  trained "
              f"in {r['train_s']:.0f} s")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', choices=sorted(TASKS), help='run one task')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=0, help='data and training seed')
    parser.add_argument('--strict', action='store_true',
                        help='exit with status 1 when a metric misses its target')
    parser.add_argument('--arch', default='l1', choices=ARCHS,
                        help='backbone to train (default l1: the demo configs as they are)')
    parser.add_argument('--slim', action='store_true',
                        help='the latency-driven search end to end (see above)')
    parser.add_argument('--family', choices=sorted(SLIM), default='v1',
                        help='with --slim: v1 (an L3-shaped supernet to L1\'s latency, default) '
                        'or v2 (an S2-shaped V2 supernet to S0\'s latency)')
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the demo configs use paths relative to the repository
    torch.set_num_threads(args.threads)
    if args.slim:
        if args.only or args.arch != 'l1' or args.strict:
            parser.error('--slim runs its own trainings: no --only / --arch / --strict')
        slim_demo(args.seed, args.threads, args.family)
        return 0
    if args.family != 'v1':
        parser.error('--family chooses the search of --slim: add --slim')
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
