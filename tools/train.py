"""Train an mmdet or mmseg model from a config (dispatches on the config's default_scope).

Examples:
    python tools/train.py configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py
    python tools/train.py CONFIG --work-dir work_dirs/run1 --resume          # newest checkpoint
    python tools/train.py CONFIG --resume work_dirs/run1/iter_4000.pth
    bash tools/dist_train.sh CONFIG 8                                           # 8 GPUs, torchrun
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmengine.config import DictAction  # noqa: E402

from mmef.engine import (build_runner, check_dataset, enable_amp, load_config,  # noqa: E402
                         set_resume, set_work_dir, setup_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an mmdet / mmseg model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from this checkpoint, or (no value / "auto") from the '
                             'newest complete checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='fp16 mixed precision (CUDA only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                             'train_cfg.max_iters=100)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (pytorch: torchrun / tools/dist_train.sh)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    set_resume(cfg, args.resume)
    setup_launcher(cfg, args.launcher)
    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    runner = build_runner(cfg)
    for split in ('train', 'val'):
        check_dataset(runner, split)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
