"""Initialising an EfficientFormer backbone from a checkpoint file (``init_cfg`` Pretrained).

The backbones look up :class:`PretrainedEfficientFormer` in :data:`mmef.registry.WEIGHT_INITIALIZERS`
for their ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=..., map_location=...)``.
"""
import math

from mmengine.logging import print_log

from ..models.attention import DENSE_BIAS_RESOLUTIONS, resize_table
from ..registry import WEIGHT_INITIALIZERS
from .io import CheckpointError
from .reader import match_keys, read_checkpoint

IMAGENET_BIAS_RESOLUTION = 7
# the input normalisation the ImageNet weights were trained with (as mmdet / mmseg
# data_preprocessor settings)
IMAGENET_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                     bgr_to_rgb=True)


def _bias_table_fitter(model, path):
    """``fit`` for :func:`match_keys`: resizes an ImageNet table (7x7; 14x14 for V2's
    downsampling attention, whose keys are twice as dense) as a grid to the model's side."""
    def fit(key, table, shape):
        if not key.endswith('attn.bias_table'):
            return None
        attn = model.get_submodule(key.rsplit('.', 1)[0])
        res = math.isqrt(table.shape[-1])
        model_res = attn.bias_resolution
        if table.dim() == 2 and table.shape[0] == shape[0] and res * res == table.shape[-1] \
                and res == IMAGENET_BIAS_RESOLUTION * attn.resolution_factor:
            return resize_table(table, res, (model_res, model_res)).reshape(shape)
        dense = ', '.join(f'{r} for {name}' for r, name in DENSE_BIAS_RESOLUTIONS.items())
        raise CheckpointError(
            f'{path!r}: {key} is a {res}x{res} attention-bias table ({tuple(table.shape)}), the '
            f'model expects {model_res}x{model_res} ({shape}). Tables other than the ImageNet '
            f'ones come from dense models (the original weights use {dense}, with the '
            f"pair-matrix bias): build the backbone with attn_bias_mode='official', "
            f'attn_bias_resolution={res // attn.resolution_factor}')
    return fit


def _describe(model):
    """'EfficientFormer l1' / 'EfficientFormerV2 s0' (or the arch dict of a custom variant)."""
    names = [k for k, v in type(model).arch_settings.items() if v == model.arch]
    return f'{type(model).__name__} {names[0] if names else model.arch}'


def load_pretrained(model, path, prefix=None, map_location='cpu'):
    """Loads original / timm / mmpretrain / mmef weights into ``model`` and logs a summary.

    Keys are mapped to mmef names (:func:`read_checkpoint`); a 7x7 attention-bias table is
    resized as a grid when the model uses another resolution; the original classifier (head,
    dist_head, norm) is left out as expected. Raises :class:`CheckpointError` when a tensor does
    not fit (naming the key and both shapes), when the file needs another attention-bias
    setting, or when almost nothing matches.

    Returns:
        dict: ``loaded``, ``missing``, ``unexpected`` and ``classifier`` key lists.
    """
    ckpt = read_checkpoint(path, prefix=prefix, map_location=map_location)
    if ckpt.dense and model.attn_bias_mode != 'official':
        options = ' or '.join(f'{r} ({name})' for r, name in DENSE_BIAS_RESOLUTIONS.items())
        raise CheckpointError(
            f"{ckpt.path!r} is an original dense checkpoint trained with the pair-matrix "
            f"attention bias; build the backbone with attn_bias_mode='official' and "
            f'attn_bias_resolution={options}, or convert it with tools/convert_checkpoint.py, '
            f'which prints the setting it needs')
    if hasattr(model, 'map_backbone_keys'):  # a supernet: backbone names to its own
        ckpt.backbone = model.map_backbone_keys(ckpt.backbone)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = match_keys(ckpt, expected, _describe(model),
                       fit=_bias_table_fitter(model, ckpt.path))
    own = model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in found['matched'].items()}
    result = model.load_state_dict(matched, strict=False)
    # matched only holds the model's own names, so nothing can be unexpected; the missing keys
    # are the ones match_keys listed, reported below
    # (BatchNorm fills a missing num_batches_tracked itself, so load_state_dict omits those)
    listed = [k for k in found['missing'] if not k.endswith('num_batches_tracked')]
    if result.unexpected_keys or sorted(k for k in result.missing_keys
                                        if not k.endswith('num_batches_tracked')) != listed:
        raise RuntimeError(f'internal error loading {ckpt.path!r}: {result}')
    missing, unexpected, classifier = found['missing'], found['unexpected'], found['classifier']
    print_log(
        f'{type(model).__name__}: loaded {len(matched)} tensors from {ckpt.path}; '
        f'missing {len(missing)}: {missing[:8]}{" ..." if len(missing) > 8 else ""}; '
        f'unexpected {len(unexpected)}: {unexpected[:8]}; '
        f'classifier left out as expected: {len(classifier)} '
        f'({sorted({k.split(".")[0] for k in classifier})})', logger='current')
    if ckpt.kind == 'imagenet':
        # the backbone cannot see the detector's data_preprocessor (the tools check configs:
        # mmef.engine.check_input_normalisation); say what these weights expect
        print_log(f'{ckpt.path}: ImageNet weights, trained on RGB images normalised with mean '
                  f'{IMAGENET_NORM["mean"]} and std {IMAGENET_NORM["std"]}: the model\'s '
                  f'data_preprocessor must give them (mean=..., std=..., bgr_to_rgb=True for '
                  f'BGR-loaded images)', logger='current')
    return dict(loaded=sorted(matched), missing=missing, unexpected=unexpected,
                classifier=classifier)


@WEIGHT_INITIALIZERS.register_module()
class PretrainedEfficientFormer:
    """``init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix=None, map_location='cpu')`` of
    mmef backbones: :func:`load_pretrained` with those arguments."""

    def __init__(self, checkpoint, prefix=None, map_location='cpu'):
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.map_location = map_location

    def __call__(self, module):
        return load_pretrained(module, self.checkpoint, prefix=self.prefix,
                               map_location=self.map_location)
