"""Evaluate a checkpoint with an mmdet or mmseg config (dispatches on the config's default_scope).

Examples:
    python tools/test.py CONFIG work_dirs/run1/epoch_12.pth
    python tools/test.py CONFIG CKPT --show-dir vis --out results.pkl
    bash tools/dist_test.sh CONFIG CKPT 8
    python tools/test.py CONFIG --backend work_dirs/onnx/end2end.onnx \
        --deploy-config configs/mmdeploy/instance-seg_onnxruntime_dynamic.py
    python tools/test.py CONFIG --backend work_dirs/ov/end2end.xml \
        --deploy-config configs/mmdeploy/instance-seg_openvino_dynamic.py

With --backend, the file exported by tools/deploy.py is evaluated instead, through mmdeploy's
backend model (ONNX Runtime's .onnx or OpenVINO's .xml, as the deploy config says), with the
config's test dataloader and evaluator.
Prints the metrics and, with --metrics-json, writes them to a file.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmengine.config import DictAction  # noqa: E402

from mmef.checkpoint import load_file  # noqa: E402
from mmef.engine import (build_runner, check_dataset, load_config, set_work_dir,  # noqa: E402
                         setup_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) an mmdet / mmseg checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file (not with --backend)')
    parser.add_argument('--work-dir', help='directory for the logs and metrics')
    parser.add_argument('--out', help='mmdet: dump raw results to this .pkl file; mmseg: '
                                      'save predicted label maps in this directory')
    parser.add_argument('--show-dir', help='save visualised predictions in this directory '
                                           '(relative to the work dir\'s timestamp folder)')
    parser.add_argument('--metrics-json', help='write the metrics to this json file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--backend', help='evaluate this exported file (tools/deploy.py) '
                                          'through mmdeploy instead of the checkpoint')
    parser.add_argument('--deploy-config', help='the mmdeploy config it was exported with')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if bool(args.backend) != bool(args.deploy_config):
        parser.error('--backend and --deploy-config go together')
    if bool(args.backend) == bool(args.checkpoint):
        parser.error('give either a checkpoint or --backend (whose file has the weights)')
    if args.backend and (args.out or args.show_dir or args.launcher != 'none'):
        parser.error('--backend evaluates in one process, without --out / --show-dir')
    for path in filter(None, (args.backend, args.deploy_config)):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _show(cfg, scope, show_dir):
    hook = cfg.default_hooks.visualization
    hook.draw = True
    if scope == 'mmdet':
        hook.test_out_dir = show_dir
    else:
        hook.interval = 1
        cfg.visualizer.save_dir = show_dir
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]


def _out(cfg, scope, out):
    if scope == 'mmdet':
        if not out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {out!r}: mmdet results are dumped as a .pkl file')
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type='DumpDetResults', out_file_path=out))
    else:
        cfg.test_evaluator.output_dir = out
        cfg.test_evaluator.keep_results = True


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options)
    if args.checkpoint:
        load_file(args.checkpoint)  # clear errors for a missing, corrupt or unsafe file
        cfg.load_from = args.checkpoint
    set_work_dir(cfg, args.work_dir, args.config)
    if args.show_dir:
        _show(cfg, scope, args.show_dir)
    if args.out:
        _out(cfg, scope, args.out)
    setup_launcher(cfg, args.launcher)
    if args.backend:
        import mmef.mmdeploy_compat  # noqa: F401  (the post-processing the file was made with)
        from mmdeploy.utils import load_config as load_deploy_config
        from mmef.export_check import build_backend_runner
        runner = build_backend_runner(cfg, load_deploy_config(args.deploy_config)[0],
                                      [args.backend])
    else:
        runner = build_runner(cfg)
    check_dataset(runner, 'test')
    metrics = runner.test()
    printable = {k: float(v) if hasattr(v, '__float__') else v for k, v in metrics.items()}
    print('metrics: ' + json.dumps(printable, sort_keys=True))
    if args.metrics_json:
        with open(args.metrics_json, 'w') as f:
            json.dump(printable, f, indent=1, sort_keys=True)
    return printable


if __name__ == '__main__':
    main()
