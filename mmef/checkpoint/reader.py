"""The one checkpoint reader: read safely, detect the layout, strip prefixes, map keys, check fit.

Both ``init_cfg=dict(type='Pretrained')`` (:mod:`.pretrained`) and the converter (:mod:`.convert`)
go through :func:`read_checkpoint` and :func:`match_keys`, so a file that one of them accepts the
other accepts too.
"""
import re
from dataclasses import dataclass, field

from .io import CheckpointError, container_key, load_file, state_dict_of
from .keys import (CLASSIFIER_PREFIXES, FAMILY_BACKBONES, key_family, map_with_report,
                   needs_official_bias)

# fewer matched tensors than this share of the model's means the file is not for this model
MIN_MATCHED_FRACTION = 0.5
# the output GroupNorms (norm0..norm3) are not part of ImageNet files and start fresh
OUTPUT_NORM = re.compile(r'^norm\d\.')
# mmpretrain ImageNet classifier (outside 'backbone.') -> the original names
_MMPRETRAIN_HEAD = {'head.head.': 'head.', 'head.dist_head.': 'dist_head.'}


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in a file.

    Attributes:
        path: the file.
        format: layout of the backbone keys ('original', 'timm', 'mmpretrain', 'mmef') or None.
        backbone: backbone tensors under mmef names (ImageNet classifier under its original
            names ``head.`` / ``dist_head.`` / ``norm.``).
        rest: the other tensors of a whole model (neck / heads), unchanged.
        kind: 'imagenet', 'backbone', 'detection', 'segmentation' or 'model'.
        dense: an original COCO / ADE20K file trained with the pair-matrix bias ('official').
        dropped: source key -> why it was not mapped.
        entries: top-level entries besides the weights (optimizer, meta, args, ...).
        dataset_meta: class names / palette the model was trained with, when the file says.
        renamed: how many backbone tensors got a new name.
    """
    path: str
    format: str
    backbone: dict
    rest: dict
    kind: str
    dense: bool
    dropped: dict = field(default_factory=dict)
    entries: list = field(default_factory=list)
    dataset_meta: dict = None
    renamed: int = 0


def _strip(state_dict, prefix):
    """Drops a DataParallel ``module.`` wrapper, then splits off ``prefix`` (default: the
    ``backbone.`` keys of a whole model, if any). Returns (backbone-level dict, rest)."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if prefix is None:
        if not any(k.startswith('backbone.') for k in state_dict):
            return state_dict, {}
        prefix = 'backbone.'
    prefix = prefix.rstrip('.') + '.'
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in state_dict.items() if not k.startswith(prefix)}


def _rest_kind(rest):
    """(renamed rest, kind) from the keys outside the backbone."""
    if any(k.startswith(tuple(_MMPRETRAIN_HEAD)) for k in rest):
        out = {}
        for key, value in rest.items():
            for old, new in _MMPRETRAIN_HEAD.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            out[key] = value
        return out, 'imagenet'
    if any(k.startswith(('rpn_head.', 'roi_head.', 'bbox_head.')) for k in rest):
        return rest, 'detection'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in rest):
        return rest, 'segmentation'
    return rest, 'model' if rest else 'backbone'


def _dataset_meta(raw):
    """Class names (and palette) a trained model carries: mmengine ``meta.dataset_meta``, or the
    ``CLASSES`` / ``PALETTE`` of mmcv 1.x runner checkpoints."""
    meta = raw.get('meta') if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get('dataset_meta'), dict):
        return dict(meta['dataset_meta'])
    if meta.get('CLASSES') is not None:
        out = {'classes': tuple(meta['CLASSES'])}
        if meta.get('PALETTE') is not None:
            out['palette'] = [tuple(int(c) for c in color) for color in meta['PALETTE']]
        return out
    return None


def read_checkpoint(path, prefix=None, map_location='cpu'):
    """Reads an EfficientFormer checkpoint of any known layout; see :class:`Checkpoint`.

    Args:
        path (str): the file (read with ``torch.load(weights_only=True)`` and mmef's allowlist).
        prefix (str, optional): take the backbone from the keys under this prefix (e.g.
            ``'backbone.'``); default: ``backbone.`` keys if the file has any, else all keys.
            A DataParallel ``module.`` wrapper is removed first in every case.
        map_location: passed to ``torch.load``.

    Raises:
        CheckpointError: the file is unreadable or unsafe, or holds no tensors. A file with no
            EfficientFormer layout is read (``format`` None); :func:`match_keys` refuses it.
    """
    path = str(path)
    raw = load_file(path, map_location=map_location)
    container = container_key(raw)
    entries = sorted(str(k) for k in raw if k != container) if container else []
    state = state_dict_of(raw, path)
    backbone, rest = _strip(state, prefix)
    fmt, mapped, dropped = map_with_report(backbone)
    rest, kind = _rest_kind(rest)
    if kind == 'backbone' and any(k.startswith(CLASSIFIER_PREFIXES) for k in mapped):
        kind = 'imagenet'
    return Checkpoint(path=path, format=fmt, backbone=mapped, rest=rest, kind=kind,
                      dense=needs_official_bias(backbone), dropped=dropped, entries=entries,
                      dataset_meta=_dataset_meta(raw),
                      renamed=sum(1 for k in mapped if k not in backbone))


def unknown_layout(ckpt):
    """The error for a file none of whose keys has an EfficientFormer layout."""
    return (f'{ckpt.path!r} is not an EfficientFormer checkpoint: none of its '
            f'{len(ckpt.backbone)} backbone tensors has the original, timm, mmpretrain or mmef '
            f'layout (first keys: {list(ckpt.backbone)[:4]})')


def match_keys(ckpt, expected, what, fit=None):
    """Matches the backbone tensors of ``ckpt`` against ``expected`` (name -> shape).

    Args:
        ckpt (Checkpoint): from :func:`read_checkpoint`.
        expected (dict): the model's tensor names and shapes.
        what (str): the model, for messages (e.g. 'EfficientFormer l1').
        fit (callable, optional): ``fit(key, tensor, shape)`` returns a tensor of ``shape`` for a
            mismatched one it can adapt (e.g. an attention-bias table), or None.

    Returns:
        dict: ``matched`` (name -> tensor), ``classifier``, ``unexpected`` and ``missing`` (sorted
        name lists; the output norms, absent from ImageNet files, count as missing).

    Raises:
        CheckpointError: a tensor does not fit (naming the key and both shapes), or fewer than
            half of the model's tensors (output norms aside) are in the file.
    """
    file_family, model_family = key_family(ckpt.backbone), key_family(expected)
    if file_family and model_family and file_family != model_family:
        raise CheckpointError(
            f'{ckpt.path!r} holds {FAMILY_BACKBONES[file_family]} weights (its key layout is '
            f'{file_family.upper()}\'s) and the model is {what}: use '
            f"type='{FAMILY_BACKBONES[file_family]}' for this file")
    matched, classifier, unexpected = {}, [], []
    for key, value in ckpt.backbone.items():
        if key not in expected:
            (classifier if key.startswith(CLASSIFIER_PREFIXES) else unexpected).append(key)
            continue
        if tuple(value.shape) != tuple(expected[key]):
            adapted = fit(key, value, tuple(expected[key])) if fit is not None else None
            if adapted is None:
                raise CheckpointError(
                    f'{ckpt.path!r} does not fit this {what}: {key} has shape '
                    f'{tuple(value.shape)} in the file and {tuple(expected[key])} in the model; '
                    f'the checkpoint is probably for another variant')
            value = adapted
        matched[key] = value
    required = [k for k in expected if not OUTPUT_NORM.match(k)]
    found = [k for k in matched if not OUTPUT_NORM.match(k)]
    if len(found) < MIN_MATCHED_FRACTION * len(required):
        missing = [k for k in required if k not in matched]
        why = unknown_layout(ckpt) if ckpt.format is None else (
            f'is it a checkpoint of this model, and complete? Missing e.g. {missing[:4]}')
        raise CheckpointError(f'{ckpt.path!r}: only {len(found)} of the {len(required)} backbone '
                              f'tensors matched (model: {what}); {why}')
    return dict(matched=matched, classifier=sorted(classifier), unexpected=sorted(unexpected),
                missing=sorted(k for k in expected if k not in matched))
