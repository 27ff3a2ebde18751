"""Latency-driven slimming of an EfficientFormer supernet (the paper's search) on your task,
input size and hardware, with a latency table of tools/latency_table.py.

Example:
    python tools/slim.py configs/supernet/fpn_efficientformer-supernet-l7_8xb4-40k_ade20k-512x512.py \\
        work_dirs/supernet/iter_40000.pth --table work_dirs/lut_v1_512x512.json --target-ms 120 \\
        --work-dir work_dirs/slim

From the whole supernet, one action per step (a block to identity, the first MB3D to MB4D, the
least important stage 16 channels narrower), the one with the smallest score drop per
millisecond saved, until the table predicts at most --target-ms. The score is minus the model's
loss on --val-batches validation batches (see docs/slimming.md). Writes to --work-dir: arch.json,
subnet_config.py (inherits CONFIG, trains the found EfficientFormer), subnet.pth (the model with
the sub-network's inherited weights; its backbone loads through init_cfg), steps.json and
path.png (predicted latency against score).
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmdet / mmseg config with an EfficientFormerSupernet')
    parser.add_argument('checkpoint', help='the trained supernet')
    parser.add_argument('--table', required=True, help='latency table (v1) of the target')
    parser.add_argument('--target-ms', type=float, required=True,
                        help='latency budget of the deployed backbone, in ms')
    parser.add_argument('--work-dir', required=True, help='where the results are written')
    parser.add_argument('--val-batches', type=int, default=8,
                        help='validation batches each candidate is scored on')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='the input size the table must be of (default: the config\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    for path in (args.config, args.checkpoint, args.table):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    if args.val_batches < 1:
        parser.error('--val-batches must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.runner import load_checkpoint

    from mmef.engine import build_runner, load_config
    from mmef.fileio import atomic_write
    from mmef.latency import LatencyTable
    from mmef.latency import slim as slimming
    cfg, _ = load_config(args.config, args.cfg_options)
    backbone = cfg.model.get('backbone', {})
    if str(backbone.get('type', '')).split('.')[-1] != 'EfficientFormerSupernet':
        raise SystemExit(f'{args.config}: model.backbone is {backbone.get("type")!r}, not an '
                         'EfficientFormerSupernet: slim a supernet config (configs/supernet/)')
    size = tuple(args.input_size) if args.input_size else slimming.task_input_size(cfg)
    table = LatencyTable.load(args.table).check(family='v1', input_size=size)
    print(f'table: {table.describe()}')

    os.makedirs(args.work_dir, exist_ok=True)
    cfg.work_dir = osp.join(args.work_dir, 'runner')
    cfg.val_dataloader.dataset.pipeline = slimming.annotations_first(
        cfg.val_dataloader.dataset.pipeline)
    cfg.model.backbone.init_cfg = None  # the checkpoint has all weights
    runner = build_runner(cfg)
    model = runner.model
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    loader = runner.build_dataloader(cfg.val_dataloader)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.val_batches:
            break
    out_indices = model.backbone.out_indices

    def progress(step):
        print(f"step {step['step']}: {step['action']} ({step['what']}): latency "
              f"{step['latency_ms']:.2f} ms (target {args.target_ms:.2f}), score "
              f"{step['score']:.4f}", flush=True)

    steps = slimming.slim(model.backbone, table, args.target_ms,
                          slimming.loss_evaluator(model, batches), out_indices,
                          progress=progress)
    found = steps[-1]
    arch = model.backbone.check_subnet(found['arch'])
    backbone_arch = model.backbone.backbone_arch(arch)

    ckpt = osp.abspath(osp.join(args.work_dir, 'subnet.pth'))
    config_file = osp.join(args.work_dir, 'subnet_config.py')
    atomic_write(slimming.subnet_config(osp.abspath(args.config), cfg.model.backbone,
                                        backbone_arch, ckpt, cfg.get('custom_hooks'),
                                        cfg.model.get('neck')), config_file)
    subnet_cfg, _ = load_config(config_file)
    subnet_cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        subnet_model = MODELS.build(subnet_cfg.model)
    state = {'state_dict': slimming.subnet_state_dict(model, subnet_model, arch),
             'meta': dict(arch=backbone_arch, slimmed_from=args.checkpoint)}
    atomic_write(lambda f: torch.save(state, f), ckpt)
    atomic_write(json.dumps(dict(supernet_arch=found['arch'], arch=found['backbone_arch'],
                                 predicted_ms=found['latency_ms'], target_ms=args.target_ms,
                                 table=table.describe()), indent=1),
                 osp.join(args.work_dir, 'arch.json'))
    atomic_write(json.dumps(steps, indent=1), osp.join(args.work_dir, 'steps.json'))
    slimming.plot_path(steps, osp.join(args.work_dir, 'path.png'), args.target_ms)
    print(f"found {backbone_arch}: predicted {found['latency_ms']:.2f} ms (target "
          f'{args.target_ms:.2f}); wrote {args.work_dir}')
    return steps


if __name__ == '__main__':
    main()
