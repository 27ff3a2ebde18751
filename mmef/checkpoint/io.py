"""Safe checkpoint reading: ``torch.load(weights_only=True)`` with a small allowlist.

torch >= 2.6 refuses, by default, any pickled object that is not a tensor or a plain container.
Three kinds of files users hold carry a few harmless extra types:

* the original EfficientFormer ImageNet files: ``args`` is an ``argparse.Namespace``;
* mmengine runner checkpoints (what our trainings save): the message hub holds
  ``HistoryBuffer`` objects backed by numpy arrays, whose statistics methods are pickled as
  ``getattr(HistoryBuffer, name)`` (a stand-in resolves exactly those);
* mmcv 1.x runner checkpoints (the original COCO / ADE20K weights): numpy scalars in ``meta``.

Those types are added to torch's allowlist at ``import mmef``, so mmengine's own loader (resume,
``load_from``, the inference APIs) reads them too. Nothing else is allowed: a pickle that names
any other callable is refused without running it.
"""
import argparse
import os
import pickle
import zipfile

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


def _history_buffer_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine's HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
    only those attributes resolve, so the name ``getattr`` opens nothing else.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in {'min', 'max', 'current', 'mean',
                                         *HistoryBuffer._statistics_methods}:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint')


def _safe_globals():
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = [argparse.Namespace, HistoryBuffer, np.ndarray, np.dtype,
               (_history_buffer_getattr, 'builtins.getattr')]
    try:  # numpy 2 moved numpy.core to numpy._core
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed += [multiarray._reconstruct, multiarray.scalar]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes, e.g. Float64DType
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return allowed


SAFE_GLOBALS = _safe_globals()
torch.serialization.add_safe_globals(SAFE_GLOBALS)


def load_file(path, map_location='cpu'):
    """Reads a checkpoint with ``weights_only=True``; errors name the file and what to do."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint file {path!r} does not exist; check the path '
                                f'(init_cfg checkpoint=..., --checkpoint or the converter input)')
    if os.path.isdir(path):
        raise IsADirectoryError(f'checkpoint path {path!r} is a directory; pass the .pth file '
                                f'inside it')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps every refusal in the same long preamble; pick the line with the reason.
        # A disallowed callable is named as a GLOBAL ('Unsupported global: GLOBAL io.open',
        # 'unsupported GLOBAL os.makedirs ... blocked'); other errors ('Unsupported operand 109'
        # for a text file) mean the file is no checkpoint at all.
        lines = [ln.strip() for ln in str(err).split('WeightsUnpickler error:')[-1].splitlines()
                 if ln.strip()]
        unsafe = [ln for ln in lines if 'global' in ln.lower() or 'blocked' in ln]
        lines = [ln for ln in lines if 'unsupported' in ln.lower()] or lines
        detail = clip((unsafe or lines or [type(err).__name__])[0])
        if unsafe:
            raise CheckpointError(
                f'refused to load {path!r}: it pickles objects outside the safe allowlist, and '
                f'loading them could run arbitrary code ({detail}). If you trust the file, '
                f'convert it in a trusted environment to a plain state dict') from None
        raise CheckpointError(f'{path!r} is not a readable PyTorch checkpoint ({detail})') \
            from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        msg = clip(str(err).strip().splitlines()[0]) if str(err).strip() else type(err).__name__
        raise CheckpointError(f'{path!r} is truncated, corrupt or not a PyTorch checkpoint '
                              f'({msg}); download or save it again') from None


def clip(text, limit=300):
    """``text`` shortened to at most ``limit`` characters at a word boundary, marked ' ...'."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 4]
    return (cut[:cut.rfind(' ')] if ' ' in cut else cut).rstrip(' ,;:') + ' ...'


def container_key(obj):
    """The entry of a loaded checkpoint that holds the weights ('state_dict', 'model' or
    'module'), or None when the object is the state dict itself."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'module'):
            if isinstance(obj.get(key), dict):
                return key
    return None


def state_dict_of(obj, path='<checkpoint>'):
    """The tensor dict inside a loaded checkpoint ('state_dict', 'model', 'module' or itself)."""
    key = container_key(obj)
    if key is not None:
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path!r} holds no state dict of tensors (looked for '
                              f"'state_dict', 'model', 'module' or a plain dict of tensors)")
    return dict(obj)
