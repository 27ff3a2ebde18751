"""mmef's model registry.

`EfficientFormer` is registered twice, on purpose and without any import-time guessing:
in the root mmengine registry, which mmdet's and mmseg's MODELS registries fall back to, so
``type='EfficientFormer'`` works in their configs; and in this 'mmef' scope, so
``type='mmef.EfficientFormer'`` names it unambiguously.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmef', locations=['mmef.models'])
