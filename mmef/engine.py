"""Shared logic of tools/train.py, tools/test.py and tools/infer.py.

Everything a careless command line can get wrong is checked here, before a runner is built, with
an error that names the problem and the fix: a config path that does not exist, a config of an
unsupported codebase, a ``--work-dir`` that is a file, ``--resume`` with nothing to resume,
``--amp`` without a GPU. It also makes the configs run as several processes on a CPU-only
machine (torchrun + gloo), which mmengine's launcher does not do by itself.
"""
import glob
import inspect
import os.path as osp
import re

import torch
from mmengine.config import Config
from mmengine.logging import print_log

# what the EfficientFormer ImageNet weights were trained on (RGB, ImageNet mean / std)
from .checkpoint.pretrained import IMAGENET_NORM

SCOPES = ('mmdet', 'mmseg')
_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def load_config(path, cfg_options=None):
    """``Config.fromfile`` with a clear error for a missing path or an unsupported scope.

    Returns:
        tuple: (Config, scope), scope being 'mmdet' or 'mmseg' (the config's default_scope).
    """
    if not osp.isfile(path):
        what = 'is a directory' if osp.isdir(path) else 'does not exist'
        raise FileNotFoundError(f'config file {path!r} {what}; pass the path of a config .py '
                                f'file (mmef\'s are in the repository\'s configs/ folder)')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'config {path!r} has default_scope={scope!r}; these tools run '
                         f'{SCOPES} configs (set default_scope in the config)')
    check_feature_channels(cfg)
    check_input_normalisation(cfg)
    return cfg, scope


def _is_efficientformer(node):
    return str((node or {}).get('type', '')).split('.')[-1].startswith('EfficientFormer')


def check_input_normalisation(cfg):
    """Warns (and returns the message) when a config gives an EfficientFormer that starts from
    pretrained weights images normalised otherwise than those weights were trained with, e.g.
    mmdet's caffe-style configs (BGR, mean 102.98 / 115.95 / 122.77, std 1): it would train
    silently with the wrong input statistics. Returns None when the config is consistent."""
    import warnings
    model = cfg.get('model', {})
    backbone = model.get('backbone', {})
    init = backbone.get('init_cfg') if _is_efficientformer(backbone) else None
    inits = init if isinstance(init, (list, tuple)) else [init] if init else []
    if not any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in inits):
        return None
    pre = model.get('data_preprocessor') or {}
    mean, std = pre.get('mean'), pre.get('std')
    rgb = bool(pre.get('bgr_to_rgb', False) or pre.get('rgb_to_bgr', False))

    def close(a, b):
        return a is not None and len(a) == len(b) and all(abs(x - y) < 1e-2
                                                          for x, y in zip(a, b))
    if close(mean, IMAGENET_NORM['mean']) and close(std, IMAGENET_NORM['std']) and rgb:
        return None
    msg = (f'model.data_preprocessor normalises with mean={mean}, std={std}, '
           f'bgr_to_rgb={rgb}, but the EfficientFormer weights in model.backbone.init_cfg were '
           f'trained on RGB images normalised with the ImageNet statistics: set '
           f"model.data_preprocessor.mean={IMAGENET_NORM['mean']}, "
           f"model.data_preprocessor.std={IMAGENET_NORM['std']} and "
           f'model.data_preprocessor.bgr_to_rgb=True (caffe-style configs use BGR, std 1)')
    warnings.warn(msg, UserWarning, stacklevel=2)
    return msg


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

    mmengine's ``find_latest_checkpoint`` reads the ``last_checkpoint`` pointer file. mmengine
    writes that file with a plain ``open``, so a run killed while writing it leaves it empty or
    truncated, and the file it names may be gone; then the newest ``iter_N.pth`` /
    ``epoch_N.pth`` is used instead. Temporary files of an interrupted atomic save
    (``.iter_N.pth.*.tmp``) are never considered.
    """
    from mmengine.runner import find_latest_checkpoint
    named = find_latest_checkpoint(work_dir)
    if named and osp.isfile(named):
        return named
    candidates = [p for p in glob.glob(osp.join(work_dir, '*.pth')) if _checkpoint_step(p) >= 0]
    return max(candidates, key=_checkpoint_step) if candidates else None


def set_resume(cfg, resume):
    """Applies ``--resume``: None (start fresh), 'auto' (newest in work_dir) or a path.

    The checkpoint is read once here (safely, see :func:`mmef.checkpoint.load_file`), so that a
    missing, truncated or unsafe file fails now with its name, not deep inside the runner.
    """
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
    from .checkpoint import CheckpointError, load_file
    try:
        load_file(path)
    except CheckpointError as err:
        raise CheckpointError(f'--resume: cannot resume from {err}. Pass another checkpoint '
                              f'(e.g. an earlier iter_*.pth of the same work dir)') from None
    cfg.resume = True
    cfg.load_from = path
    return path


def check_feature_channels(cfg):
    """Refuses a model config whose neck / head ``in_channels`` do not match what its
    EfficientFormer backbone outputs (mmdet's FPN otherwise fails with a bare AssertionError)."""
    model = cfg.get('model', {})
    backbone = model.get('backbone', {})
    if not _is_efficientformer(backbone):
        return
    from mmengine.registry import MODELS
    import mmef  # noqa: F401  (registers the backbones)
    cls = MODELS.get(backbone['type'])
    defaults = inspect.signature(cls).parameters
    name = backbone.get('arch', defaults['arch'].default)
    try:
        arch = cls.parse_arch(name)
        indices = cls.parse_out_indices(backbone.get('out_indices',
                                                     defaults['out_indices'].default))
    except ValueError as err:
        raise ValueError(f'model.backbone: {err}') from None
    channels = [arch['widths'][i] for i in indices]
    consumer, key = ('neck', 'model.neck') if model.get('neck') else \
        ('decode_head', 'model.decode_head')
    node = model.get(consumer) or {}
    if isinstance(node, (list, tuple)) or 'in_channels' not in node:
        return
    wanted = node['in_channels']
    wanted = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
    if consumer == 'decode_head' and 'in_index' in node:
        index = node['in_index']
        got = [channels[i] for i in (index if isinstance(index, (list, tuple)) else [index])
               if -len(channels) <= i < len(channels)]
    else:
        got = channels
    if got != wanted:
        raise ValueError(
            f'{key}.in_channels={wanted} does not match the EfficientFormer backbone, which '
            f'outputs {channels} channels (arch {name!r}, out_indices '
            f'{indices}); set {key}.in_channels={got} or '
            f'change model.backbone.out_indices')


def check_dataset(runner, split):
    """Builds the runner's ``split`` ('train' / 'val' / 'test') dataloader now and refuses an
    empty dataset naming its paths (empty folders otherwise fail deep inside mmengine, whose
    datasets cannot serialise an empty sample list: 'need at least one array to concatenate')."""
    loader_cfg = runner.cfg.get(f'{split}_dataloader')
    if loader_cfg is None or runner.cfg.get(f'{split}_cfg') is None:
        return
    try:
        empty = len(getattr(runner, f'{split}_dataloader').dataset) == 0  # builds the loop
    except ValueError as err:
        if 'need at least one array to concatenate' not in str(err):
            raise
        empty = True
    if empty:
        ds = loader_cfg['dataset']
        while 'data_root' not in ds and isinstance(ds.get('dataset'), dict):  # wrappers
            ds = ds['dataset']
        raise ValueError(
            f'the {split} dataset ({ds.get("type")}) is empty: no samples under '
            f'data_root={ds.get("data_root")!r}, data_prefix={ds.get("data_prefix")}, '
            f'ann_file={ds.get("ann_file")!r}; check those paths in {split}_dataloader.dataset '
            f'(and that images and annotations are there)') from None


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
    """``Runner.from_cfg`` or the registered ``runner_type``, in the config's scope.

    mmdet's and mmseg's configs name their visualizer 'visualizer', and mmengine hands out an
    existing instance of that name, with the log directory of the run that created it; each
    runner built here gets a visualizer of its own instead.
    """
    import uuid
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if isinstance(cfg.get('visualizer'), dict) and cfg.visualizer.get('name') == 'visualizer':
        cfg.visualizer.name = f'visualizer_{uuid.uuid4().hex[:12]}'

    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def build_inferencer(config, checkpoint, device='cpu'):
    """(inferencer, scope): mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` for a config
    (path or Config) and checkpoint. Each builds its own visualizer and its pipeline in its own
    scope, so detection and segmentation inferencers work side by side in one process."""
    if isinstance(config, str):
        cfg, scope = load_config(config)
    else:
        cfg, scope = config, config.get('default_scope')
    from .checkpoint import load_file
    load_file(checkpoint)  # clear errors for a missing, corrupt or unsafe file
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        return DetInferencer(model=cfg, weights=checkpoint, device=device,
                             show_progress=False), scope
    from mmseg.apis import MMSegInferencer
    return MMSegInferencer(model=cfg, weights=checkpoint, device=device), scope


def draw_prediction(inferencer, scope, image, out_file, score_thr=0.3, opacity=0.5):
    """Predicts ``image`` (a path) and writes the drawing to ``out_file``; returns the path."""
    import mmcv
    from mmengine.registry import DefaultScope
    kwargs = dict(pred_score_thr=score_thr) if scope == 'mmdet' else \
        dict(opacity=opacity, with_labels=True)
    # calls to the mmdet and mmseg APIs look registries up in the current default scope:
    # pin it to this inferencer's codebase
    with DefaultScope.overwrite_default_scope(scope):
        result = inferencer(image, return_vis=True, **kwargs)
    drawn = result['visualization']  # mmdet: a list per image; mmseg: the image for one input
    mmcv.imwrite(mmcv.rgb2bgr(drawn[0] if isinstance(drawn, list) else drawn), out_file)
    return out_file
