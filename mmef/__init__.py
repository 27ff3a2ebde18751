"""mmef: EfficientFormer backbones for the OpenMMLab 2.x stack.

``custom_imports = dict(imports=['mmef'], allow_failed_imports=False)`` in an mmdet or mmseg
config registers the ``EfficientFormer``, ``EfficientFormerV2``, ``EfficientFormerSupernet`` and
``EfficientFormerV2Supernet`` backbones (with :class:`mmef.hooks.SupernetTemperatureHook` and the
sandwich training loops of :mod:`mmef.sandwich`) and lets torch load mmengine runner
checkpoints with ``weights_only=True`` (see :mod:`mmef.checkpoint`).

When mmdeploy is already imported (as in mmdeploy's own ``tools/deploy.py``, which loads the
model config, and with it ``custom_imports``, after importing mmdeploy), importing mmef also
registers :mod:`mmef.mmdeploy_compat`, the fixes stock mmdeploy 1.3.1 needs on torch 2.13.
Otherwise import ``mmef.mmdeploy_compat`` before exporting.
"""
import sys

from . import checkpoint  # noqa: F401  (registers the safe-loading allowlist)
from . import fileio  # noqa: F401  (registers the 'mmef_atomic' checkpoint file backend)
from . import hooks  # noqa: F401  (registers SupernetTemperatureHook)
from . import sandwich  # noqa: F401  (registers the sandwich training loops)
from .models import (EfficientFormer, EfficientFormerSupernet, EfficientFormerV2,
                     EfficientFormerV2Supernet)
from .version import __version__

if sys.modules.get('mmdeploy') is not None:
    from . import mmdeploy_compat  # noqa: F401

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'EfficientFormerSupernet',
           'EfficientFormerV2Supernet', '__version__']
