"""Converting EfficientFormer checkpoints of any known layout to a plain mmef state-dict file.

Sources: the original ImageNet files ({'model', 'args', 'optimizer', ...}), the original mmcv 1.x
Mask R-CNN / Semantic FPN runner checkpoints ({'meta', 'state_dict', 'optimizer'} with
``backbone.`` keys), timm and mmpretrain ImageNet files, and mmef files (a no-op). The output holds
only tensors, so ``torch.load(weights_only=True)`` reads it:

* ImageNet files -> backbone keys in mmef names plus the classifier under its original names
  (``head.``, ``dist_head.``, ``norm.``), for ``init_cfg=dict(type='Pretrained', checkpoint=...)``;
* detector / segmentor files -> the whole model: ``backbone.`` + mmef names, and the neck and head
  keys, which mmdet 3 / mmseg 1 still use under the same names, for ``load_from`` or
  ``tools/test.py CONFIG CHECKPOINT``.

The file is written to a temporary file next to DST and renamed over it, so an interrupted or
failed write never leaves a partial DST; DST is only replaced when ``force=True``.
"""
import hashlib
import math
import os
import re
import tempfile

import torch

from .io import CheckpointError, load_file, state_dict_of
from .keys import CLASSIFIER_PREFIXES, map_with_report, needs_official_bias

# Neck / head keys renamed between mmdet 2.19 / mmseg 0.19 and mmdet 3 / mmseg 1: none for the
# heads the original recipes use (FPN, RPNHead, Shared2FCBBoxHead, FCNMaskHead, FPNHead), which
# kept their module names (lateral_convs / fpn_convs, rpn_conv / rpn_cls / rpn_reg, shared_fcs /
# fc_cls / fc_reg, convs / upsample / conv_logits, scale_heads / conv_seg). Kept as a table so a
# rename found later is one line.
HEAD_RENAMES = {}

# mmpretrain ImageNet classifier (outside 'backbone.') -> the original names
_MMPRETRAIN_HEAD = {'head.head.': 'head.', 'head.dist_head.': 'dist_head.'}

# dense models the converter knows, by the attention-bias table side of the original files
DENSE_RESOLUTIONS = {25: 'COCO Mask R-CNN', 16: 'ADE20K Semantic FPN'}
CONFIGS = {
    'detection': 'configs/mask_rcnn/mask-rcnn_efficientformer-{arch}_fpn_1x_coco.py',
    'segmentation': 'configs/semantic_fpn/fpn_efficientformer-{arch}_8xb4-40k_ade20k-512x512.py',
}


def _split(state_dict):
    """(backbone-level dict, other model keys): files of whole models carry 'backbone.' keys."""
    if state_dict and all(k.startswith('module.') for k in state_dict):  # DataParallel wrapper
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if not any(k.startswith('backbone.') for k in state_dict):
        return state_dict, {}
    backbone = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    rest = {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
    return backbone, rest


def _rename_rest(rest):
    """Maps the non-backbone keys; returns (dict, kind)."""
    if any(k.startswith(tuple(_MMPRETRAIN_HEAD)) for k in rest):
        out = {}
        for key, value in rest.items():
            for old, new in _MMPRETRAIN_HEAD.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            out[key] = value
        return out, 'imagenet'
    out = {}
    for key, value in rest.items():
        for old, new in HEAD_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    if any(k.startswith(('rpn_head.', 'roi_head.', 'bbox_head.')) for k in out):
        return out, 'detection'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in out):
        return out, 'segmentation'
    return out, 'model' if out else 'backbone'


def infer_arch(state_dict):
    """('l1' | 'l3' | 'l7' | arch dict) of an mmef-named backbone dict, or None."""
    from ..models.efficientformer import EfficientFormer
    try:
        widths = [state_dict['stem.conv2.conv.weight'].shape[0]] + [
            state_dict[f'stages.{i}.downsample.conv.weight'].shape[0] for i in (1, 2, 3)]
    except KeyError:
        return None
    blocks = [{m.group(1) for k in state_dict
               for m in [re.match(rf'stages\.{i}\.(blocks\.\d+|attn_blocks\.\d+)\.', k)] if m}
              for i in range(4)]
    arch = dict(widths=tuple(widths), depths=tuple(len(b) for b in blocks),
                num_attn_blocks=sum(b.startswith('attn_') for b in blocks[3]))
    for name, setting in EfficientFormer.arch_settings.items():
        if tuple(setting['widths']) == arch['widths']:
            return name  # a named variant: missing or extra blocks are then reported
    return arch


def bias_resolution(state_dict, path='<checkpoint>'):
    """Side R of the attention-bias tables (all must agree), or None without attention."""
    sizes = {v.shape[-1] for k, v in state_dict.items() if k.endswith('attn.bias_table')}
    if not sizes:
        return None
    if len(sizes) > 1 or math.isqrt(next(iter(sizes)))**2 != next(iter(sizes)):
        raise CheckpointError(f'{path!r}: attention-bias tables of different or non-square '
                              f'sizes: {sorted(sizes)}')
    return math.isqrt(sizes.pop())


def _expected_keys(arch, resolution):
    """name -> shape of an mmef EfficientFormer of this arch (built on the meta device)."""
    from ..models.efficientformer import EfficientFormer
    with torch.device('meta'):
        model = EfficientFormer(arch, attn_bias_resolution=resolution or 7)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _settings(dense, resolution, kind, arch):
    """The backbone setting and config the converted file needs, as printable text."""
    name = arch if isinstance(arch, str) else '<custom arch>'
    if dense:
        opts = (f'model.backbone.attn_bias_mode=official '
                f'model.backbone.attn_bias_resolution={resolution} model.backbone.init_cfg=None')
        cfg = CONFIGS.get(kind, CONFIGS['detection' if resolution == 25 else 'segmentation'])
        return dict(attn_bias_mode='official', attn_bias_resolution=resolution,
                    config=cfg.format(arch=name), cfg_options=opts)
    if resolution in (None, 7):
        return dict(attn_bias_mode='relative or official (ImageNet 7x7 table, resized on load)',
                    attn_bias_resolution=None, config=None,
                    cfg_options='model.backbone.init_cfg.checkpoint=<this file>')
    hint = (f"; 'official' if it was converted from an original "
            f"{DENSE_RESOLUTIONS[resolution]} file") if resolution in DENSE_RESOLUTIONS else ''
    return dict(attn_bias_mode=f'the mode it was trained with (not stored in the file){hint}',
                attn_bias_resolution=resolution, config=None,
                cfg_options=f'model.backbone.attn_bias_resolution={resolution}')


def _write_atomic(obj, dst, force):
    """torch.save to a temp file in DST's folder, fsync, then rename over DST."""
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(dst)}.', suffix='.tmp',
                                   dir=folder)
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)  # a file object: the archive name does not depend on DST's name
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if not force and os.path.exists(dst):
            raise FileExistsError(f'output {dst!r} appeared while converting; pass --force '
                                  f'(force=True) to overwrite it')
        os.replace(tmp, dst)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileExistsError):
            raise OSError(f'could not write {dst!r} ({err}); nothing was written and an '
                          f'existing file there is unchanged') from err
        raise


def _check_paths(dst, force):
    if os.path.isdir(dst):
        raise IsADirectoryError(f'output {dst!r} is a directory; give a file name such as '
                                f'{os.path.join(dst, "converted.pth")!r}')
    if os.path.exists(dst) and not force:
        raise FileExistsError(f'output {dst!r} already exists; pass --force (force=True) to '
                              f'overwrite it')
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'output folder {folder!r} does not exist; create it first')


def convert_checkpoint(src, dst, force=False):
    """Converts SRC to a state-dict-only mmef file at DST and returns a summary dict.

    Raises:
        FileNotFoundError / IsADirectoryError: SRC missing or a directory, DST's folder missing.
        FileExistsError: DST exists and ``force`` is False.
        CheckpointError: SRC is corrupt, unsafe, or not an EfficientFormer checkpoint.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    _check_paths(dst, force)
    raw = load_file(src)
    # top-level entries besides the weights (optimizer, meta, args, ...) are not written
    container = next((k for k in ('state_dict', 'model', 'module')
                      if isinstance(raw, dict) and isinstance(raw.get(k), dict)), None)
    entries = sorted(str(k) for k in raw if k != container) if container else []
    state = state_dict_of(raw, src)
    backbone, rest = _split(state)
    fmt, mapped, dropped = map_with_report(backbone)
    if fmt is None:
        raise CheckpointError(
            f'{src!r} is not an EfficientFormer checkpoint: none of its {len(backbone)} backbone '
            f'tensors has the original, timm, mmpretrain or mmef layout (first keys: '
            f'{list(state)[:4]})')
    dense = needs_official_bias(backbone)
    rest, kind = _rename_rest(rest)
    if kind == 'backbone' and any(k.startswith(CLASSIFIER_PREFIXES) for k in mapped):
        kind = 'imagenet'
    arch = infer_arch(mapped)
    if arch is None:
        raise CheckpointError(f'{src!r}: the {fmt} keys lack the stem or downsampling convs, so '
                              f'the EfficientFormer variant cannot be told; is the file complete?')
    resolution = bias_resolution(mapped, src)
    expected = _expected_keys(arch, resolution)
    classifier = [k for k in list(mapped) + list(rest)
                  if k.startswith(CLASSIFIER_PREFIXES) and k not in expected]
    left_over = [k for k in mapped if k not in expected and k not in classifier]
    missing = [k for k in expected if k not in mapped and
               not (kind == 'imagenet' and re.match(r'norm\d\.', k))]  # fresh in ImageNet files
    bad_shapes = [f'{k}: {tuple(mapped[k].shape)} in the file, {expected[k]} in mmef'
                  for k in mapped if k in expected and tuple(mapped[k].shape) != expected[k]]
    if bad_shapes:
        raise CheckpointError(f'{src!r}: tensors do not fit an EfficientFormer {arch}: '
                              f'{bad_shapes[:3]}')
    if len(missing) > len(expected) // 2:
        raise CheckpointError(f'{src!r}: only {len(expected) - len(missing)} of the '
                              f'{len(expected)} EfficientFormer tensors found; is the file '
                              f'complete? Missing e.g. {missing[:4]}')

    prefix = '' if kind in ('imagenet', 'backbone') else 'backbone.'
    out = {prefix + k: v.detach().clone().contiguous() for k, v in mapped.items()}
    out.update({k: v.detach().clone().contiguous() for k, v in rest.items()})
    _write_atomic(out, dst, force)
    with open(dst, 'rb') as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    renamed = sum(1 for k in mapped if k not in backbone)
    return dict(src=src, dst=dst, format=fmt, kind=kind, arch=arch, tensors=len(out),
                mapped=len(mapped), renamed=renamed, kept=len(rest), dropped=dropped,
                dropped_entries=entries, left_over=left_over, missing=missing,
                classifier=classifier, attn_bias_resolution=resolution,
                needs=_settings(dense, resolution, kind, arch), sha256=sha256)


def format_summary(summary):
    """Human-readable lines for a :func:`convert_checkpoint` summary."""
    s = summary
    lines = [f"converted {s['src']} ({s['format']} layout, {s['kind']}, EfficientFormer "
             f"{s['arch']}) -> {s['dst']}",
             f"  {s['mapped']} backbone tensors in mmef names ({s['renamed']} renamed), "
             f"{s['kept']} {'classifier' if s['kind'] == 'imagenet' else 'neck/head'} tensors "
             f"kept outside the backbone, {s['tensors']} tensors written"]
    reasons = {}
    for key, reason in s['dropped'].items():
        reasons.setdefault(reason, []).append(key)
    for reason, keys in reasons.items():
        lines.append(f'  dropped {len(keys)}: {reason} (e.g. {keys[0]})')
    if s['dropped_entries']:
        lines.append(f"  dropped non-weight entries: {', '.join(s['dropped_entries'])}")
    if s['classifier']:
        lines.append(f"  ImageNet classifier kept under its original names "
                     f"({len(s['classifier'])} tensors; ignored when loading a backbone)")
    if s['left_over']:
        lines.append(f"  WARNING left over (not EfficientFormer names, written unchanged): "
                     f"{s['left_over'][:8]}")
    if s['missing']:
        lines.append(f"  WARNING missing {len(s['missing'])} tensors an mmef EfficientFormer "
                     f"{s['arch']} has: {s['missing'][:8]}")
    needs = s['needs']
    if needs['attn_bias_resolution'] is None:
        lines.append(f"  backbone setting: any attn_bias_mode; load with init_cfg="
                     f"dict(type='Pretrained', checkpoint='{s['dst']}')")
    else:
        mode = needs['attn_bias_mode']
        mode = repr(mode) if mode in ('official', 'relative') else f'<{mode}>'
        lines.append(f"  backbone setting: attn_bias_mode={mode}, "
                     f"attn_bias_resolution={needs['attn_bias_resolution']}")
    if needs['config']:
        lines.append(f"  use: python tools/test.py {needs['config']} {s['dst']} "
                     f"--cfg-options {needs['cfg_options']}")
    lines.append(f"  sha256 {s['sha256']}")
    return '\n'.join(lines)
