from mmengine.registry import MODELS as MMENGINE_MODELS

from .efficientformer import EfficientFormer

MMENGINE_MODELS.register_module(module=EfficientFormer)

__all__ = ['EfficientFormer']
