"""Shared helpers of the config / tool / resume tests: tiny datasets and cfg overrides."""
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # `import tools.train` etc.
    sys.path.insert(0, ROOT)

DET_DEMO = osp.join(ROOT, 'configs/demo/mask-rcnn_efficientformer-l1_fpn_shapes-demo.py')
SEG_DEMO = osp.join(ROOT, 'configs/demo/fpn_efficientformer-l1_scenes-demo.py')
PYTHON = sys.executable


def tiny_coco(root):
    """4 training and 2 validation images of the synthetic shapes dataset."""
    from mmef.demo_data import make_coco_shapes
    if not osp.isfile(osp.join(root, 'annotations/instances_val2017.json')):
        make_coco_shapes(root, num_train=4, num_val=2, size=(96, 128), seed=1)
    return root


def tiny_ade(root):
    """4 training and 2 validation scenes of the synthetic ADE20K-style dataset."""
    from mmef.demo_data import make_ade_scenes
    if not osp.isdir(osp.join(root, 'annotations/validation')):
        make_ade_scenes(root, num_train=4, num_val=2, size=(64, 96), seed=1)
    return root


def det_options(data_root, epochs=1):
    """--cfg-options for the det demo config: tiny data, batch 2, ``epochs`` epochs, val each."""
    data_root = data_root.rstrip('/') + '/'
    opts = {f'{loader}.dataset.data_root': data_root
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    opts.update({
        'val_evaluator.ann_file': data_root + 'annotations/instances_val2017.json',
        'test_evaluator.ann_file': data_root + 'annotations/instances_val2017.json',
        'train_dataloader.batch_size': 2,
        'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': 3,
        'default_hooks.logger.interval': 1,
        'randomness.seed': 0,
    })
    return opts


def seg_options(data_root, iters=2, ckpt_interval=None):
    """--cfg-options for the seg demo config: tiny data, batch 2, 64x64 crops, ``iters`` iters."""
    opts = {f'{loader}.dataset.data_root': data_root
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    opts.update({
        'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': ckpt_interval or iters,
        'default_hooks.checkpoint.max_keep_ckpts': 3,
        'default_hooks.logger.interval': 1,
        'randomness.seed': 0,
    })
    return opts


def as_argv(options):
    """A cfg-options dict as ``--cfg-options k=v ...`` command-line words."""
    return ['--cfg-options'] + [f'{k}={v}' for k, v in options.items()]


def subprocess_env(threads=1):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               PYTHONWARNINGS='ignore')
    return env
