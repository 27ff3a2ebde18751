"""Converting EfficientFormer checkpoints of any known layout to a plain mmef state-dict file.

Sources: the original ImageNet files ({'model', 'args', 'optimizer', ...}), the original mmcv 1.x
Mask R-CNN / Semantic FPN runner checkpoints ({'meta', 'state_dict', 'optimizer'} with
``backbone.`` keys), timm and mmpretrain ImageNet files, and mmef files, including one's own
training checkpoints. The output holds only tensors and plain containers, so
``torch.load(weights_only=True)`` reads it:

* ImageNet files -> backbone keys in mmef names plus the classifier under its original names
  (``head.``, ``dist_head.``, ``norm.``), for ``init_cfg=dict(type='Pretrained', checkpoint=...)``;
* detector / segmentor files -> the whole model: ``backbone.`` + mmef names, and the neck and head
  keys, which mmdet 3 / mmseg 1 still use under the same names, for ``load_from`` or
  ``tools/test.py CONFIG CHECKPOINT``;
* when the source names the classes it was trained on (mmengine ``meta.dataset_meta``, mmcv 1.x
  ``meta.CLASSES`` / ``PALETTE``), the output is ``{'state_dict': ..., 'meta': {'dataset_meta':
  ...}}``, so that the inference APIs label predictions with those classes.

The file is written to a temporary file next to DST and renamed over it, so an interrupted or
failed write never leaves a partial DST; DST is only replaced when ``force=True``.
"""
import hashlib
import math
import os
import re

import torch

from ..fileio import atomic_write
from ..models.attention import DENSE_BIAS_RESOLUTIONS
from .io import CheckpointError
from .reader import OUTPUT_NORM, match_keys, read_checkpoint, unknown_layout

# the mmef configs (in the repository's configs/ folder) that the dense files belong to; family
# is 'efficientformer' (V1) or 'efficientformerv2'
DENSE_CONFIGS = {
    'detection': 'mask-rcnn_{family}-{arch}_fpn_1x_coco.py',
    'segmentation': 'fpn_{family}-{arch}_8xb4-40k_ade20k-512x512.py',
}
_DENSE_KIND = {25: 'detection', 16: 'segmentation'}
assert set(_DENSE_KIND) == set(DENSE_BIAS_RESOLUTIONS)


def model_class(fmt):
    """The backbone class of a checkpoint layout (see :func:`mmef.checkpoint.keys.detect_format`)."""
    from ..models import EfficientFormer, EfficientFormerV2
    return EfficientFormerV2 if fmt.endswith('_v2') else EfficientFormer


def infer_arch(state_dict, cls=None):
    """Arch name (or, for V1, an arch dict) of an mmef-named backbone dict, or None."""
    from ..models import EfficientFormer
    cls = cls or EfficientFormer
    try:
        widths = [state_dict['stem.conv2.conv.weight'].shape[0]] + [
            next(state_dict[k] for k in (f'stages.{i}.downsample.conv.weight',
                                         f'stages.{i}.downsample.conv.conv.weight')
                 if k in state_dict).shape[0] for i in (1, 2, 3)]
    except (KeyError, StopIteration):
        return None
    for name, setting in cls.arch_settings.items():
        if tuple(setting['widths']) == tuple(widths):
            return name  # a named variant: missing or extra blocks are then reported
    if cls is not EfficientFormer:
        return None  # V2's MLP ratios per block cannot be told from the widths
    blocks = [{m.group(1) for k in state_dict
               for m in [re.match(rf'stages\.{i}\.(blocks\.\d+|attn_blocks\.\d+)\.', k)] if m}
              for i in range(4)]
    return dict(widths=tuple(widths), depths=tuple(len(b) for b in blocks),
                num_attn_blocks=sum(b.startswith('attn_') for b in blocks[3]))


def bias_resolution(state_dict, path='<checkpoint>'):
    """Side R of the stage attention-bias tables (all must agree; V2's downsampling table must
    be 2R), or None without attention."""
    sizes = {v.shape[-1] for k, v in state_dict.items()
             if k.endswith('attn.bias_table') and '.downsample.' not in k}
    down = {v.shape[-1] for k, v in state_dict.items()
            if k.endswith('attn.bias_table') and '.downsample.' in k}
    if not sizes:
        return None
    side = math.isqrt(next(iter(sizes)))
    if len(sizes) > 1 or side**2 not in sizes or down - {(2 * side)**2}:
        raise CheckpointError(f'{path!r}: attention-bias tables of different or non-square '
                              f'sizes: {sorted(sizes)} (downsampling: {sorted(down)})')
    return side


def _expected_keys(cls, arch, resolution):
    """name -> shape of an mmef backbone of this arch (built on the meta device)."""
    with torch.device('meta'):
        model = cls(arch, attn_bias_resolution=resolution or 7)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _settings(dense, resolution, kind, arch, cls):
    """The backbone setting and config the converted file needs, as printable text."""
    name = arch if isinstance(arch, str) else '<custom arch>'
    if dense:
        opts = (f'model.backbone.attn_bias_mode=official '
                f'model.backbone.attn_bias_resolution={resolution} model.backbone.init_cfg=None')
        cfg = DENSE_CONFIGS.get(kind, DENSE_CONFIGS[_DENSE_KIND.get(resolution, 'detection')])
        return dict(attn_bias_mode='official', attn_bias_resolution=resolution,
                    config=cfg.format(family=cls.__name__.lower(), arch=name), cfg_options=opts)
    if resolution in (None, 7):
        return dict(attn_bias_mode='relative or official (ImageNet 7x7 table, resized on load)',
                    attn_bias_resolution=None, config=None,
                    cfg_options='model.backbone.init_cfg.checkpoint=<this file>')
    hint = (f"; 'official' if it was converted from an original "
            f"{DENSE_BIAS_RESOLUTIONS[resolution]} file") \
        if resolution in DENSE_BIAS_RESOLUTIONS else ''
    return dict(attn_bias_mode=f'the mode it was trained with (not stored in the file){hint}',
                attn_bias_resolution=resolution, config=None,
                cfg_options=f'model.backbone.attn_bias_resolution={resolution}')


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
    ckpt = read_checkpoint(src)
    if ckpt.format is None:
        raise CheckpointError(unknown_layout(ckpt))
    mapped, rest = ckpt.backbone, ckpt.rest
    cls = model_class(ckpt.format)
    arch = infer_arch(mapped, cls)
    if arch is None:
        raise CheckpointError(f'{src!r}: the {ckpt.format} keys lack the stem or downsampling '
                              f'convs, or their widths match no {cls.__name__} variant '
                              f'({sorted(cls.arch_settings)}), so the variant cannot be told; '
                              f'is the file complete?')
    resolution = bias_resolution(mapped, src)
    expected = _expected_keys(cls, arch, resolution)
    found = match_keys(ckpt, expected, f'{cls.__name__} {arch}')
    classifier = found['classifier'] + sorted(k for k in rest if k.startswith(('head.',
                                                                                'dist_head.')))
    # ImageNet files have no output norms: those start fresh, they are not missing
    missing = [k for k in found['missing']
               if not (ckpt.kind == 'imagenet' and OUTPUT_NORM.match(k))]

    prefix = '' if ckpt.kind in ('imagenet', 'backbone') else 'backbone.'
    out = {prefix + k: v.detach().clone().contiguous() for k, v in mapped.items()}
    out.update({k: v.detach().clone().contiguous() for k, v in rest.items()})
    if ckpt.dataset_meta is not None:  # class names for the inference APIs and visualisers
        out = {'state_dict': out, 'meta': {'dataset_meta': ckpt.dataset_meta}}
    atomic_write(lambda f: torch.save(out, f), dst, overwrite=force)
    with open(dst, 'rb') as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    return dict(src=src, dst=dst, format=ckpt.format, kind=ckpt.kind, arch=arch,
                tensors=len(mapped) + len(rest), mapped=len(mapped), renamed=ckpt.renamed,
                kept=len(rest), dropped=ckpt.dropped, dropped_entries=ckpt.entries,
                left_over=found['unexpected'], missing=missing, classifier=classifier,
                attn_bias_resolution=resolution, dataset_meta=ckpt.dataset_meta,
                needs=_settings(ckpt.dense, resolution, ckpt.kind, arch, cls),
                model=cls.__name__, sha256=sha256)


def format_summary(summary):
    """Human-readable lines for a :func:`convert_checkpoint` summary."""
    s = summary
    lines = [f"converted {s['src']} ({s['format']} layout, {s['kind']}, {s['model']} "
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
        lines.append(f"  WARNING missing {len(s['missing'])} tensors an mmef {s['model']} "
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
    if s['dataset_meta']:
        classes = list(s['dataset_meta'].get('classes', ()))
        lines.append(f"  kept dataset_meta ({len(classes)} classes: {classes[:4]}"
                     f"{' ...' if len(classes) > 4 else ''})")
    if needs['config']:
        lines.append(f"  use with the mmef config {needs['config']} (in the repository's "
                     f"configs/): python tools/test.py CONFIG {s['dst']} --cfg-options "
                     f"{needs['cfg_options']}")
    lines.append(f"  sha256 {s['sha256']}")
    return '\n'.join(lines)
