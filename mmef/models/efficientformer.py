"""EfficientFormer (V1) backbone for dense prediction.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed" (Li et al., NeurIPS 2022).
The network is dimension-consistent: the stem, the downsampling convs and the MB4D blocks run on NCHW
maps; the last stage flattens once into (B, N, C) tokens for its MB3D attention blocks, and those tokens
become a spatial map again only where the stage is an output.
"""
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..registry import MODELS
from .base import EfficientFormerBase
from .layers import MB3D, MB4D, ConvNorm, Stem


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
class EfficientFormer(EfficientFormerBase):
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
    arch_keys = ('widths', 'depths', 'num_attn_blocks')

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
        super().__init__(arch, in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                         attn_bias_mode, attn_bias_resolution, init_cfg)
        widths, depths = self.arch['widths'], self.arch['depths']
        self.stem = Stem(in_channels, widths[0])
        dpr = self.drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            self.stages.append(
                EfficientFormerStage(
                    widths[max(i - 1, 0)], widths[i], depths[i],
                    self.arch['num_attn_blocks'] if i == self.num_stages - 1 else 0,
                    dpr[i], layer_scale_init_value, attn_bias_mode,
                    attn_bias_resolution, downsample=i > 0, with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.GroupNorm(1, widths[i]))
        self._freeze_stages()

    @classmethod
    def check_arch(cls, arch):
        n = arch['num_attn_blocks']
        if not (isinstance(n, int) and 0 <= n <= arch['depths'][-1]):
            raise ValueError(f'arch["num_attn_blocks"] must be an int in [0, depths[-1]='
                             f'{arch["depths"][-1]}], got {n!r}')

    def forward(self, x):
        self.check_input(x)
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x)
            if i in self.out_indices:
                # tokens become a spatial map only here, at the output
                feat = x if hw is None else x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)
                # contiguous NCHW whatever the input's memory format: mmcv's CPU RoIAlign reads
                # its input as NCHW without looking at strides
                outs.append(getattr(self, f'norm{i}')(feat).contiguous())
        return tuple(outs)
