"""What the EfficientFormer backbone families share: argument checks, ``arch`` lookup, stage
freezing, ``norm_eval``, input checks and ``init_cfg`` handling."""
import copy

import torch.nn as nn
from mmengine.model import BaseModule, initialize
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import DEPLOYERS, WEIGHT_INITIALIZERS
from .attention import BIAS_MODES


class EfficientFormerBase(BaseModule):
    """Base of :class:`EfficientFormer` and :class:`EfficientFormerV2`.

    Subclasses define ``arch_settings`` (name -> dict), ``arch_keys`` (the keys of an arch dict),
    ``check_arch(arch)`` for their own arch rules, and build ``self.stem`` and ``self.stages``
    (four modules); output norms, if any, are ``norm{i}``.
    """

    arch_settings = {}
    arch_keys = ()
    num_stages = 4

    def __init__(self, arch, in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                 attn_bias_mode, attn_bias_resolution, init_cfg):
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.arch = self.parse_arch(arch)
        self.out_indices = self.parse_out_indices(out_indices)
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= self.num_stages):
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}] (-1: none, '
                             f'0: stem, k: stem and stages 0..k-1), got {frozen_stages!r}')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        if attn_bias_mode not in BIAS_MODES:
            raise ValueError(f'attn_bias_mode must be one of {BIAS_MODES}, got {attn_bias_mode!r}')
        if not (isinstance(attn_bias_resolution, int) and attn_bias_resolution >= 1):
            raise ValueError(f'attn_bias_resolution must be a positive int (7 for ImageNet '
                             f'weights), got {attn_bias_resolution!r}')
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.attn_bias_mode = attn_bias_mode
        self.attn_bias_resolution = attn_bias_resolution
        self.widths = tuple(self.arch['widths'])

    @classmethod
    def check_arch(cls, arch):
        """Family-specific checks of a normalised arch dict; raises ValueError."""

    @classmethod
    def parse_arch(cls, arch):
        """Returns a validated copy of the arch dict; raises ValueError naming the valid choices."""
        name = cls.__name__
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_settings:
                raise ValueError(f'Unknown {name} arch {arch!r}; valid choices: '
                                 f'{sorted(cls.arch_settings)} or a dict with keys {cls.arch_keys}')
            return copy.deepcopy(cls.arch_settings[arch.lower()])
        if not isinstance(arch, dict):
            raise ValueError(f'arch must be one of {sorted(cls.arch_settings)} or a dict with keys '
                             f'{cls.arch_keys}, got {type(arch).__name__}')
        missing = [k for k in cls.arch_keys if k not in arch]
        unknown = sorted(set(arch) - set(cls.arch_keys))
        if missing or unknown:
            raise ValueError(f'arch dict must have exactly the keys {cls.arch_keys}; missing keys: '
                             f'{missing}, unknown keys: {unknown}')
        arch = {k: copy.deepcopy(arch[k]) for k in cls.arch_keys}
        for key in ('widths', 'depths'):
            value = arch[key]
            if (not isinstance(value, (list, tuple)) or len(value) != cls.num_stages
                    or not all(isinstance(v, int) and v > 0 for v in value)):
                raise ValueError(f'arch[{key!r}] must be {cls.num_stages} positive ints, '
                                 f'got {value!r}')
            arch[key] = tuple(value)
        if arch['widths'][0] % 2:
            raise ValueError(f'arch["widths"][0] must be even (the stem halves it), '
                             f'got {arch["widths"][0]}')
        cls.check_arch(arch)
        return arch

    @classmethod
    def parse_out_indices(cls, out_indices):
        """Normalised, sorted tuple of stage indices; the caller's value is not modified."""
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            raise ValueError('out_indices must name at least one stage in 0..3')
        normalised = []
        for i in indices:
            if not isinstance(i, int) or not -cls.num_stages <= i < cls.num_stages:
                raise ValueError(f'out_indices entries must be ints in [-{cls.num_stages}, '
                                 f'{cls.num_stages - 1}] (stage indices), got {out_indices!r}')
            normalised.append(i % cls.num_stages)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f'out_indices has duplicate stages: {out_indices!r}')
        return tuple(sorted(normalised))

    @staticmethod
    def drop_path_rates(depths, drop_path_rate):
        """Per-block stochastic-depth rates growing linearly over all blocks, split per stage."""
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        return [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]

    def check_input(self, x):
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} expects a (B, {self.in_channels}, H, W) '
                             f'tensor, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'{type(self).__name__} was built with in_channels={self.in_channels} and got '
                f'an input with {x.shape[1]} channels (shape {tuple(x.shape)}): build it with '
                f'in_channels={x.shape[1]}, or give it {self.in_channels}-channel images (e.g. '
                f'color_type=\'color\' in LoadImageFromFile for grayscale files)')

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]
        frozen += [getattr(self, f'norm{i}') for i in range(self.frozen_stages)
                   if hasattr(self, f'norm{i}')]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def switch_to_deploy(self, input_size=None):
        """Rewrites this backbone in place for inference: :func:`mmef.deploy.switch_to_deploy`
        (found through the registry; mmdeploy calls this method before exporting)."""
        return DEPLOYERS.get('switch_to_deploy')(self, input_size=input_size)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self):
        """Truncated-normal init of linear and 1x1 conv layers, then ``init_cfg``.

        ``init_cfg`` is a dict or a list of dicts. ``type='Pretrained'`` entries (``checkpoint``,
        optional ``prefix`` and ``map_location``) go through mmef's checkpoint reader, which
        reads the original, timm, mmpretrain and mmef formats safely and maps their keys; the
        others (e.g. ``Constant``) go to mmengine's initializers first, as mmengine orders them.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else \
            [self.init_cfg] if self.init_cfg is not None else []
        for cfg in cfgs:
            if not isinstance(cfg, dict) or 'type' not in cfg:
                raise ValueError(f'init_cfg entries must be dicts with a type, e.g. '
                                 f"dict(type='Pretrained', checkpoint=PATH); got {cfg!r}")
        others = [cfg for cfg in cfgs if cfg['type'] != 'Pretrained']
        if others:
            initialize(self, copy.deepcopy(others))
        for cfg in cfgs:
            if cfg['type'] == 'Pretrained':
                # registered by mmef.checkpoint, which the registry imports on first use
                loader = WEIGHT_INITIALIZERS.get('PretrainedEfficientFormer')
                loader(**{k: v for k, v in cfg.items() if k != 'type'})(self)
        self._is_init = True
