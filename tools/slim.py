"""Latency-driven slimming of an EfficientFormer (V1) or EfficientFormerV2 supernet on your task,
input size and hardware, with a latency table of tools/latency_table.py.

Example:
    python tools/slim.py \\
        configs/supernet/fpn_efficientformerv2-supernet-l_8xb4-40k_ade20k-512x512.py \\
        work_dirs/supernet/iter_40000.pth --table work_dirs/lut_v2_512x512.json --target-ms 120 \\
        --work-dir work_dirs/slim --measure

From the whole supernet, one action per step (V1: a block to identity, the first MB3D to MB4D,
the least important stage 16 channels narrower; V2: a lower MLP ratio, one attention block
fewer, one block fewer or 8 channels fewer, in each stage), the one with the smallest score drop
per unit of cost saved (--cost: milliseconds, or the V2 paper's Mobile Efficiency Score of
latency and parameters), until the table predicts at most --target-ms (plus --tolerance). The
score is minus the model's loss on --val-batches validation batches, a V2 candidate's BatchNorm
statistics recalibrated on --calib-batches training batches first (see docs/slimming.md).
Writes to --work-dir: arch.json, subnet_config.py (inherits CONFIG, trains the found network),
subnet.pth (the model with the sub-network's inherited weights; its backbone loads through
init_cfg), steps.json and path.png (predicted latency against score).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmdet / mmseg config with an EfficientFormerSupernet')
    parser.add_argument('checkpoint', help='the trained supernet')
    parser.add_argument('--table', required=True,
                        help='latency table of the target (of the supernet\'s family)')
    parser.add_argument('--target-ms', type=float, required=True,
                        help='latency budget of the deployed backbone, in ms')
    parser.add_argument('--work-dir', required=True, help='where the results are written')
    parser.add_argument('--val-batches', type=int, default=8,
                        help='validation batches each candidate is scored on')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='the input size the table must be of (default: the config\'s)')
    parser.add_argument('--runtime', help='the runtime you deploy on (torch, onnxruntime, ...): '
                                          'the table must be of it')
    parser.add_argument('--tolerance', type=float, default=None,
                        help='stop within this fraction above the target (default: the median '
                        'error of the table\'s own check, which no prediction beats)')
    parser.add_argument('--calib-batches', type=int, default=None,
                        help='V2: training batches each candidate\'s BatchNorm statistics are '
                        'recalibrated on (default 4; 0: the supernet\'s statistics)')
    parser.add_argument('--cost', choices=('latency', 'mes'), default='latency',
                        help='what a step saves: predicted milliseconds (default), or the V2 '
                        'paper\'s Mobile Efficiency Score of latency and parameters')
    parser.add_argument('--mes-weights', type=float, nargs=2, default=(0.5, 0.5),
                        metavar=('LATENCY', 'PARAMS'),
                        help='exponents of latency and parameter count in the MES (default '
                        '0.5 0.5)')
    parser.add_argument('--measure', action='store_true',
                        help='time the found backbone here (the table\'s runtime and threads) '
                        'and compare it with the target')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    for path in (args.config, args.checkpoint, args.table):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    if args.val_batches < 1:
        parser.error('--val-batches must be at least 1')
    if args.calib_batches is not None and args.calib_batches < 0:
        parser.error('--calib-batches must be at least 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmef.latency import MissingEntries, TableMismatch
    from mmef.latency.slim import slim_task
    try:
        return slim_task(args.config, args.checkpoint, args.table, args.target_ms,
                         args.work_dir, val_batches=args.val_batches,
                         input_size=args.input_size, runtime=args.runtime,
                         cfg_options=args.cfg_options, tolerance=args.tolerance,
                         calib_batches=args.calib_batches, cost=args.cost,
                         mes_weights=args.mes_weights, measure=args.measure)
    except (TableMismatch, MissingEntries, ValueError) as e:  # refused, with the reason
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    main()
