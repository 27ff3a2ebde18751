"""mmef: EfficientFormer backbones for the OpenMMLab 2.x stack.

``custom_imports = dict(imports=['mmef'], allow_failed_imports=False)`` in an mmdet or mmseg
config registers the ``EfficientFormer`` backbone and lets torch load mmengine runner
checkpoints with ``weights_only=True`` (see :mod:`mmef.checkpoint`).
"""
from . import checkpoint  # noqa: F401  (registers the safe-loading allowlist)
from . import fileio  # noqa: F401  (registers the 'mmef_atomic' checkpoint file backend)
from .models import EfficientFormer, EfficientFormerV2
from .version import __version__

__all__ = ['EfficientFormer', 'EfficientFormerV2', '__version__']
