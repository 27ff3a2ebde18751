"""Initialising an EfficientFormer backbone from a checkpoint file (``init_cfg`` Pretrained)."""
import math

from mmengine.logging import print_log

from ..models.attention import resize_table
from .io import CheckpointError, load_file, state_dict_of
from .keys import CLASSIFIER_PREFIXES, needs_official_bias, to_mmef

# fewer loaded tensors than this share of the backbone's means the file is not for this model
MIN_LOADED_FRACTION = 0.5


def _strip_prefix(state_dict, prefix):
    if prefix:
        prefix = prefix.rstrip('.') + '.'
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if any(k.startswith('backbone.') for k in state_dict):
        return {k[len('backbone.'):]: v for k, v in state_dict.items()
                if k.startswith('backbone.')}
    return state_dict


def _fit_bias_table(key, table, model, target, path):
    """Copies a bias table into the model, resizing a 7x7 ImageNet table as a grid."""
    res = math.isqrt(table.shape[-1])
    model_res = model.attn_bias_resolution
    if table.dim() == 2 and table.shape[0] == target.shape[0] and res * res == table.shape[-1] \
            and res == 7:
        return resize_table(table, res, (model_res, model_res)).to(target.dtype)
    raise CheckpointError(
        f'{path!r}: {key} is a {res}x{res} attention-bias table ({tuple(table.shape)}), the '
        f'model expects {model_res}x{model_res} ({tuple(target.shape)}). Tables other than the '
        f'ImageNet 7x7 one come from dense models (the original COCO weights use 25, ADE20K 16, '
        f"with the pair-matrix bias): build the backbone with attn_bias_mode='official', "
        f'attn_bias_resolution={res}')


def load_pretrained(model, path, prefix=None):
    """Loads original / timm / mmpretrain / mmef weights into ``model`` and logs a summary.

    Keys are mapped to mmef names; a 7x7 attention-bias table is resized as a grid when the model
    uses another resolution; the original classifier (head, dist_head, norm) is left out as
    expected. Raises :class:`CheckpointError` when a tensor does not fit (naming the key and both
    shapes), when the file needs another attention-bias setting, or when almost nothing loads.

    Returns:
        dict: ``loaded``, ``missing``, ``unexpected`` and ``classifier`` key lists.
    """
    path = str(path)
    raw = state_dict_of(load_file(path), path)
    source = _strip_prefix(raw, prefix)
    if needs_official_bias(source) and model.attn_bias_mode != 'official':
        raise CheckpointError(
            f"{path!r} is an original dense (COCO / ADE20K) checkpoint trained with the "
            f"pair-matrix attention bias; build the backbone with attn_bias_mode='official' and "
            f'attn_bias_resolution=25 (Mask R-CNN) or 16 (Semantic FPN), or convert it with '
            f'tools/convert_checkpoint.py, which prints the setting it needs')
    state = to_mmef(source)
    own = model.state_dict()
    classifier = sorted(k for k in state if k.startswith(CLASSIFIER_PREFIXES) and k not in own)
    to_load, unexpected = {}, []
    for key, value in state.items():
        if key in classifier:
            continue
        if key not in own:
            unexpected.append(key)
            continue
        if value.shape != own[key].shape:
            if key.endswith('attn.bias_table'):
                value = _fit_bias_table(key, value, model, own[key], path)
            else:
                raise CheckpointError(
                    f'{path!r} does not fit this EfficientFormer ({model.arch}): {key} has shape '
                    f'{tuple(value.shape)} in the file and {tuple(own[key].shape)} in the model; '
                    f'the checkpoint is probably for another variant')
        to_load[key] = value
    # the output GroupNorms are not part of ImageNet weights and start fresh, as in the original
    required = [k for k in own if not k.startswith('norm')]
    if len([k for k in to_load if not k.startswith('norm')]) < MIN_LOADED_FRACTION * len(required):
        raise CheckpointError(
            f'{path!r}: only {len(to_load)} of the {len(required)} backbone tensors matched; is '
            f'this an EfficientFormer checkpoint? First keys in the file: {list(raw)[:5]}')
    result = model.load_state_dict(to_load, strict=False)
    missing = sorted(result.missing_keys)
    assert not result.unexpected_keys, result.unexpected_keys  # to_load only holds model keys
    summary = dict(loaded=sorted(to_load), missing=missing, unexpected=sorted(unexpected),
                   classifier=classifier)
    print_log(
        f'EfficientFormer: loaded {len(to_load)} tensors from {path}; '
        f'missing {len(missing)}: {missing[:8]}{" ..." if len(missing) > 8 else ""}; '
        f'unexpected {len(unexpected)}: {unexpected[:8]}; '
        f'classifier left out as expected: {len(classifier)} '
        f'({sorted({k.split(".")[0] for k in classifier})})', logger='current')
    return summary
