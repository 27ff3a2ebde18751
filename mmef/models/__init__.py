from mmengine.registry import MODELS as MMENGINE_MODELS

from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2
from .supernet import EfficientFormerSupernet
from .supernet_v2 import EfficientFormerV2Supernet

for _cls in (EfficientFormer, EfficientFormerV2, EfficientFormerSupernet,
             EfficientFormerV2Supernet):
    MMENGINE_MODELS.register_module(module=_cls)

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'EfficientFormerSupernet',
           'EfficientFormerV2Supernet']
