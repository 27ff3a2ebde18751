"""mmef's registries.

`EfficientFormer` is registered twice, on purpose and without any import-time guessing:
in the root mmengine registry, which mmdet's and mmseg's MODELS registries fall back to, so
``type='EfficientFormer'`` works in their configs; and in this 'mmef' scope, so
``type='mmef.EfficientFormer'`` names it unambiguously.

``DEPLOYERS`` holds :func:`mmef.deploy.switch_to_deploy`, which the backbones'
``switch_to_deploy()`` method (what mmdeploy calls on a backbone before export) looks up the same
way, importing :mod:`mmef.deploy` on first use.

``WEIGHT_INITIALIZERS`` holds mmef's checkpoint initializer (``PretrainedEfficientFormer`` in
:mod:`mmef.checkpoint.pretrained`). The backbones look it up by name when their ``init_cfg`` is
``type='Pretrained'``, and the registry imports :mod:`mmef.checkpoint` on that first lookup, so
model code never imports checkpoint code.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmef', locations=['mmef.models'])
DEPLOYERS = Registry('deployer', scope='mmef', locations=['mmef.deploy'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS,
                              scope='mmef', locations=['mmef.checkpoint'])
