"""Shared logic of tools/train.py, tools/test.py and tools/infer.py.

Everything a careless command line can get wrong is checked here, before a runner is built, with
an error that names the problem and the fix: a config path that does not exist, a config of an
unsupported codebase, a ``--work-dir`` that is a file, ``--resume`` with nothing to resume,
``--amp`` without a GPU. It also makes the configs run as several processes on a CPU-only
machine (torchrun + gloo), which mmengine's launcher does not do by itself.
"""
import glob
import os.path as osp
import re

import torch
from mmengine.config import Config
from mmengine.logging import print_log

SCOPES = ('mmdet', 'mmseg')
_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def load_config(path, cfg_options=None):
    """``Config.fromfile`` with a clear error for a missing path or an unsupported scope.

    Returns:
        tuple: (Config, scope), scope being 'mmdet' or 'mmseg' (the config's default_scope).
    """
    if not osp.isfile(path):
        what = 'is a directory' if osp.isdir(path) else 'does not exist'
        raise FileNotFoundError(
            f'config file {path!r} {what}; pass the path of a config .py file, e.g. '
            f'configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'config {path!r} has default_scope={scope!r}; these tools run '
                         f'{SCOPES} configs (set default_scope in the config)')
    return cfg, scope


def set_work_dir(cfg, work_dir, config_path):
    """Work dir priority: CLI > config > ./work_dirs/<config name>. Refuses a file path."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    path = cfg.work_dir
    # the path itself or one of its parents must not be a regular file
    probe = osp.abspath(path)
    while probe and not osp.exists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if osp.exists(probe) and not osp.isdir(probe):
        raise NotADirectoryError(
            f'--work-dir {path!r} cannot be used: {probe!r} is a file, not a directory; pass a '
            f'directory path (it is created if missing)')
    return path


def _checkpoint_step(path):
    match = _CKPT_NAME.match(osp.basename(path))
    return int(match.group(2)) if match else -1


def find_resume_checkpoint(work_dir):
    """The newest complete checkpoint in ``work_dir``, or None.

    mmengine writes ``last_checkpoint`` (a text file naming the newest checkpoint) with a plain
    ``open``; if a run was killed while writing it, or the file it names is gone, the newest
    ``iter_N.pth`` / ``epoch_N.pth`` is used instead. Temporary files of an interrupted atomic
    save (``.iter_N.pth.*.tmp``) are never considered.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named and osp.isfile(named):
            return named
    candidates = [p for p in glob.glob(osp.join(work_dir, '*.pth')) if _checkpoint_step(p) >= 0]
    return max(candidates, key=_checkpoint_step) if candidates else None


def set_resume(cfg, resume):
    """Applies ``--resume``: None (start fresh), 'auto' (newest in work_dir) or a path."""
    if resume is None:
        return None
    if resume == 'auto':
        path = find_resume_checkpoint(cfg.work_dir)
        if path is None:
            raise FileNotFoundError(
                f'--resume: no checkpoint to resume from in work dir {cfg.work_dir!r} (no '
                f'last_checkpoint file, no iter_*.pth / epoch_*.pth); drop --resume to start a '
                f'new run, or pass --resume PATH/TO/CHECKPOINT.pth')
    else:
        path = resume
        if not osp.isfile(path):
            raise FileNotFoundError(f'--resume {path!r}: checkpoint file does not exist; pass '
                                    f'an existing .pth, or --resume alone for the newest one '
                                    f'in the work dir')
    cfg.resume = True
    cfg.load_from = path
    return path


def enable_amp(cfg):
    """--amp: fp16 AmpOptimWrapper with dynamic loss scaling (needs a CUDA device)."""
    if not torch.cuda.is_available():
        raise RuntimeError('--amp needs a CUDA GPU (mmengine AmpOptimWrapper does not run on '
                           'CPU); drop --amp for CPU training')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_launcher(cfg, launcher):
    """Sets ``cfg.launcher``; on a CPU-only machine prepares a torchrun (gloo) run.

    mmengine's launcher calls ``torch.cuda.set_device`` and wraps the model in DDP with
    ``device_ids``; neither works without CUDA. For ``--launcher pytorch`` on CPU this starts
    the gloo process group itself, builds DDP without device ids and turns SyncBN into BN (the
    model's buffers are still broadcast from rank 0 by DDP, so all ranks agree).
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'--launcher {launcher} needs CUDA GPUs; on a CPU machine start '
                           f'several processes with tools/dist_train.sh (torchrun, gloo)')
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    _sync_bn_to_bn(cfg.model)
    print_log(f'CPU distributed run: gloo backend, rank {dist.get_rank()} of '
              f'{dist.get_world_size()}, SyncBN replaced by BN', logger='current')


def build_runner(cfg):
    """``Runner.from_cfg`` or the registered ``runner_type``, in the config's scope."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
