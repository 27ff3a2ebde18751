"""EfficientFormer (V1) backbone for dense prediction.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed" (Li et al., NeurIPS 2022).
The network is dimension-consistent: the stem, the downsampling convs and the MB4D blocks run on NCHW
maps; the last stage flattens once into (B, N, C) tokens for its MB3D attention blocks, and those tokens
become a spatial map again only where the stage is an output.
"""
import copy

import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..registry import MODELS
from .attention import BIAS_MODES
from .layers import MB3D, MB4D, ConvNorm, Stem

ARCH_KEYS = ('widths', 'depths', 'num_attn_blocks')


class EfficientFormerStage(nn.Module):
    """Optional stride-2 downsampling, MB4D blocks, then (last stage only) MB3D blocks on tokens."""

    def __init__(self, in_channels, channels, depth, num_attn_blocks, drop_path_rates,
                 layer_scale_init_value, attn_bias_mode, attn_bias_resolution, downsample, with_cp):
        super().__init__()
        self.downsample = ConvNorm(in_channels, channels, 3, 2, 1) if downsample else nn.Identity()
        num_4d = depth - num_attn_blocks
        self.blocks = nn.ModuleList(
            MB4D(channels, drop_path=dpr, layer_scale_init_value=layer_scale_init_value)
            for dpr in drop_path_rates[:num_4d])
        self.attn_blocks = nn.ModuleList(
            MB3D(channels, drop_path=dpr, layer_scale_init_value=layer_scale_init_value,
                 attn_bias_mode=attn_bias_mode, attn_bias_resolution=attn_bias_resolution)
            for dpr in drop_path_rates[num_4d:])
        self.with_cp = with_cp

    def _run(self, block, *args):
        if self.with_cp and self.training and args[0].requires_grad:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x):
        """Returns (x, hw): a (B, C, H, W) map and None, or (B, H*W, C) tokens and their (H, W)."""
        x = self.downsample(x)
        for block in self.blocks:
            x = self._run(block, x)
        if len(self.attn_blocks) == 0:
            return x, None
        hw = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # the network's only reshape
        for block in self.attn_blocks:
            x = self._run(block, x, hw)
        return x, hw


@MODELS.register_module()
class EfficientFormer(BaseModule):
    """EfficientFormer backbone giving multi-scale NCHW maps for FPN-style necks.

    Args:
        arch (str | dict): 'l1', 'l3' or 'l7', or a dict with keys ``widths`` (4 ints),
            ``depths`` (4 ints) and ``num_attn_blocks`` (MB3D blocks at the end of the last stage).
            Defaults to 'l1'.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages to output, 0..3 (negative counts from the end).
            Output i has shape (B, widths[i], ceil(H / 2**(i+2)), ceil(W / 2**(i+2))) and passes
            through GroupNorm(1, widths[i]). Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and stages 0..k-1 (with
            their output norms). Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode during training. Defaults to False.
        drop_path_rate (float): Stochastic depth, growing linearly over all blocks. Defaults to 0.
        layer_scale_init_value (float): Initial layer scale. Defaults to 1e-5.
        attn_bias_mode (str): 'relative' (offset table resized to the actual token grid) or
            'official' (the original dense code's pair-matrix resize, needed by its released
            COCO / ADE20K weights). Defaults to 'relative'.
        attn_bias_resolution (int): Side of the attention-bias table: 7 for ImageNet weights,
            25 / 16 for the original COCO / ADE20K weights. Defaults to 7.
        with_cp (bool): Activation checkpointing of each block in training. Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)`` loads original
            EfficientFormer ImageNet files, timm / mmpretrain files and mmef files (see
            :func:`mmef.checkpoint.load_pretrained`). Defaults to None.

    Example:
        >>> import torch
        >>> from mmef.models import EfficientFormer
        >>> model = EfficientFormer('l1').eval()
        >>> for out in model(torch.rand(1, 3, 250, 330)):
        ...     print(tuple(out.shape))
        (1, 48, 63, 83)
        (1, 96, 32, 42)
        (1, 224, 16, 21)
        (1, 448, 8, 11)
    """

    arch_settings = {
        'l1': dict(widths=(48, 96, 224, 448), depths=(3, 2, 6, 4), num_attn_blocks=1),
        'l3': dict(widths=(64, 128, 320, 512), depths=(4, 4, 12, 6), num_attn_blocks=4),
        'l7': dict(widths=(96, 192, 384, 768), depths=(6, 6, 18, 8), num_attn_blocks=8),
    }
    num_stages = 4

    def __init__(self,
                 arch='l1',
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-5,
                 attn_bias_mode='relative',
                 attn_bias_resolution=7,
                 with_cp=False,
                 init_cfg=None):
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
        self.deployed = False  # set by switch_to_deploy()

        widths, depths = self.arch['widths'], self.arch['depths']
        self.widths = tuple(widths)
        self.stem = Stem(in_channels, widths[0])
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            start = sum(depths[:i])
            self.stages.append(
                EfficientFormerStage(
                    widths[max(i - 1, 0)], widths[i], depths[i],
                    self.arch['num_attn_blocks'] if i == self.num_stages - 1 else 0,
                    dpr[start:start + depths[i]], layer_scale_init_value, attn_bias_mode,
                    attn_bias_resolution, downsample=i > 0, with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.GroupNorm(1, widths[i]))
        self._freeze_stages()

    @classmethod
    def parse_arch(cls, arch):
        """Returns a validated copy of the arch dict; raises ValueError naming the valid choices."""
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_settings:
                raise ValueError(f'Unknown EfficientFormer arch {arch!r}; valid choices: '
                                 f'{sorted(cls.arch_settings)} or a dict with keys {ARCH_KEYS}')
            return copy.deepcopy(cls.arch_settings[arch.lower()])
        if not isinstance(arch, dict):
            raise ValueError(f'arch must be one of {sorted(cls.arch_settings)} or a dict with keys '
                             f'{ARCH_KEYS}, got {type(arch).__name__}')
        missing = [k for k in ARCH_KEYS if k not in arch]
        unknown = sorted(set(arch) - set(ARCH_KEYS))
        if missing or unknown:
            raise ValueError(f'arch dict must have exactly the keys {ARCH_KEYS}; missing keys: '
                             f'{missing}, unknown keys: {unknown}')
        arch = {k: arch[k] for k in ARCH_KEYS}
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
        n = arch['num_attn_blocks']
        if not (isinstance(n, int) and 0 <= n <= arch['depths'][-1]):
            raise ValueError(f'arch["num_attn_blocks"] must be an int in [0, depths[-1]='
                             f'{arch["depths"][-1]}], got {n!r}')
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

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'EfficientFormer expects a (B, {self.in_channels}, H, W) tensor, '
                             f'got shape {tuple(x.shape)}')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x)
            if i in self.out_indices:
                # tokens become a spatial map only here, at the output
                feat = x if hw is None else x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)
                outs.append(getattr(self, f'norm{i}')(feat))
        return tuple(outs)

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]
        frozen += [getattr(self, f'norm{i}') for i in range(self.frozen_stages)
                   if i in self.out_indices]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def switch_to_deploy(self, input_size=None):
        """Folds BN / layer scales into weights for inference, in place; see :mod:`mmef.deploy`."""
        from ..deploy import switch_to_deploy
        return switch_to_deploy(self, input_size)

    def train(self, mode=True):
        if mode and self.deployed:
            raise RuntimeError('This EfficientFormer was switched to deploy mode (BN and layer '
                               'scales folded into weights) and cannot be trained; build a new '
                               'model (or load an undeployed checkpoint) to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self):
        """Truncated-normal init of linear and 1x1 conv layers, then ``init_cfg`` if given.

        A ``Pretrained`` init_cfg goes through mmef's own loader, which reads the original,
        timm, mmpretrain and mmef formats safely (weights_only) and maps their keys.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from ..checkpoint import load_pretrained
            unknown = sorted(set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'})
            if unknown or 'checkpoint' not in cfg:
                raise ValueError(f'Pretrained init_cfg takes checkpoint=PATH and optionally '
                                 f'prefix=...; got {cfg}')
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
        elif cfg is not None:
            super().init_weights()
        else:
            self._is_init = True
