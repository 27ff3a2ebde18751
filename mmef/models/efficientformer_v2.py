"""EfficientFormerV2 backbone for dense prediction, at any input size.

Paper: "Rethinking Vision Transformers for MobileNet Size and Speed" (Li et al., ICCV 2023).
Everything runs on NCHW maps: a conv stem, FFN blocks (1x1 conv MLP with a depthwise 3x3 in the
middle), and at the end of stages 3 and 4 attention blocks (:class:`Attention4D`; in stage 3 on a
stride-2 copy of the map, upsampled back), with a local-global attention in the downsampling from
stage 3 to stage 4 (:class:`Attention4DDownsample`). Unlike the original dense code, every
stride-2 step gives ceil(H / 2), so odd map sizes work, and the attention biases are the offset
tables of :mod:`mmef.models.attention` (ImageNet tables reused, cached per grid size).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..registry import MODELS
from .attention import BiasedAttention
from .base import EfficientFormerBase
from .layers import ConvMlp, ConvNorm, DropPath, LayerScale, Stem


def _heads(x, num_heads):
    """(B, heads * d, h, w) -> (B, heads, h * w, d): channels are grouped head by head."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w).transpose(-2, -1)


class Attention4D(BiasedAttention):
    """Multi-head attention on an NCHW map, with talking heads around the softmax.

    q, k, v are 1x1 ConvNorms; ``v_local`` (depthwise 3x3 ConvNorm of v) is added to the attention
    output; the result passes GELU and a 1x1 ConvNorm. With ``stride=2`` the attention runs on a
    stride-2 copy (depthwise 3x3 ConvNorm) and its output is resized bilinearly back to the
    input's size.

    Args:
        channels (int): Input and output channels.
        key_dim (int): Query / key width per head. Defaults to 32.
        num_heads (int): Heads. Defaults to 8.
        attn_ratio (int): Value width per head as a multiple of key_dim. Defaults to 4.
        stride (int): 1, or 2 for attention on a stride-2 copy. Defaults to 1.
        bias_mode (str): 'relative' or 'official' (:mod:`mmef.models.attention`).
        bias_resolution (int): Side R of the bias table (over the grid the attention sees).
    """

    def __init__(self, channels, key_dim=32, num_heads=8, attn_ratio=4, stride=1,
                 bias_mode='relative', bias_resolution=7):
        super().__init__(num_heads, bias_mode, bias_resolution)
        if stride not in (1, 2):
            raise ValueError(f'Attention4D stride must be 1 or 2, got {stride!r}')
        self.key_dim, self.val_dim = key_dim, key_dim * attn_ratio
        self.scale = key_dim**-0.5
        val_channels = num_heads * self.val_dim
        self.stride_conv = ConvNorm(channels, channels, 3, 2, 1, groups=channels) \
            if stride == 2 else None
        self.q = ConvNorm(channels, num_heads * key_dim)
        self.k = ConvNorm(channels, num_heads * key_dim)
        self.v = ConvNorm(channels, val_channels)
        self.v_local = ConvNorm(val_channels, val_channels, 3, 1, 1, groups=val_channels)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = nn.GELU()
        self.proj = ConvNorm(val_channels, channels)

    def forward(self, x):
        size = x.shape[-2:]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        b, _, h, w = x.shape
        q, k = _heads(self.q(x), self.num_heads), _heads(self.k(x), self.num_heads)
        v = self.v(x)
        v_local = self.v_local(v)
        bias = self.attn_bias((h, w), dtype=q.dtype)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale + bias
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = torch.matmul(attn, _heads(v, self.num_heads))
        out = out.transpose(-2, -1).reshape(b, -1, h, w) + v_local
        if self.stride_conv is not None:
            out = F.interpolate(out, size=size, mode='bilinear', align_corners=False)
        return self.proj(self.act(out))


class Attention4DDownsample(BiasedAttention):
    """Local-global attention that halves the map: queries from a stride-2 depthwise 3x3 conv
    plus a stride-2 subsampling (1x1 average pool) of the input, then a 1x1 ConvNorm; keys and
    values from the full-resolution map; ``v_local`` a stride-2 depthwise 3x3 ConvNorm of v; no
    talking heads; output GELU and a 1x1 ConvNorm to ``out_channels``.

    The bias of query (qy, qx) and key (ky, kx) is read at (|2 qy - ky|, |2 qx - kx|) from a
    table over the key grid, of side ``bias_resolution`` (twice the backbone's
    ``attn_bias_resolution``).
    """

    def __init__(self, in_channels, out_channels, key_dim=16, num_heads=8, attn_ratio=4,
                 bias_mode='relative', bias_resolution=14):
        super().__init__(num_heads, bias_mode, bias_resolution, query_stride=2,
                         resolution_factor=2)
        self.key_dim, self.val_dim = key_dim, key_dim * attn_ratio
        self.scale = key_dim**-0.5
        val_channels = num_heads * self.val_dim
        self.q_local = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels)
        self.q = ConvNorm(in_channels, num_heads * key_dim)
        self.k = ConvNorm(in_channels, num_heads * key_dim)
        self.v = ConvNorm(in_channels, val_channels)
        self.v_local = ConvNorm(val_channels, val_channels, 3, 2, 1, groups=val_channels)
        self.act = nn.GELU()
        self.proj = ConvNorm(val_channels, out_channels)

    def forward(self, x):
        b, _, h, w = x.shape
        q = self.q(self.q_local(x) + x[:, :, ::2, ::2])  # both give ceil(h / 2) x ceil(w / 2)
        hq, wq = q.shape[-2:]
        q, k = _heads(q, self.num_heads), _heads(self.k(x), self.num_heads)
        v = self.v(x)
        v_local = self.v_local(v)
        bias = self.attn_bias((hq, wq), (h, w), dtype=q.dtype)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale + bias
        out = torch.matmul(attn.softmax(dim=-1), _heads(v, self.num_heads))
        out = out.transpose(-2, -1).reshape(b, -1, hq, wq) + v_local
        return self.proj(self.act(out))


class FFN(nn.Module):
    """V2 block without attention: ``x + ls2 * mlp(x)`` (MLP with a depthwise 3x3)."""

    def __init__(self, channels, mlp_ratio, drop_path=0., layer_scale_init_value=1e-5):
        super().__init__()
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio), mid_conv=True)
        self.ls2 = LayerScale(channels, layer_scale_init_value, channel_dim=1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        return x + self.drop_path(self.ls2(self.mlp(x)))


class AttnFFN(nn.Module):
    """V2 attention block: ``x + ls1 * attn(x)``, then the FFN part ``x + ls2 * mlp(x)``."""

    def __init__(self, channels, mlp_ratio, drop_path=0., layer_scale_init_value=1e-5,
                 stride=1, bias_mode='relative', bias_resolution=7):
        super().__init__()
        self.attn = Attention4D(channels, stride=stride, bias_mode=bias_mode,
                                bias_resolution=bias_resolution)
        self.ls1 = LayerScale(channels, layer_scale_init_value, channel_dim=1)
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio), mid_conv=True)
        self.ls2 = LayerScale(channels, layer_scale_init_value, channel_dim=1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.attn(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class AttnDownsample(nn.Module):
    """Downsampling from stage 3 to 4: conv3x3 s2 ConvNorm plus local-global attention."""

    def __init__(self, in_channels, out_channels, bias_mode='relative', bias_resolution=14):
        super().__init__()
        self.conv = ConvNorm(in_channels, out_channels, 3, 2, 1)
        self.attn = Attention4DDownsample(in_channels, out_channels, bias_mode=bias_mode,
                                          bias_resolution=bias_resolution)

    def forward(self, x):
        return self.conv(x) + self.attn(x)


class EfficientFormerV2Stage(nn.Module):
    """Optional downsampling, then FFN blocks ending in ``num_attn_blocks`` AttnFFN blocks."""

    def __init__(self, downsample, channels, mlp_ratios, num_attn_blocks, drop_path_rates,
                 layer_scale_init_value, attn_stride, attn_bias_mode, attn_bias_resolution,
                 with_cp):
        super().__init__()
        self.downsample = downsample
        depth = len(mlp_ratios)
        self.blocks = nn.ModuleList()
        for j, (ratio, dpr) in enumerate(zip(mlp_ratios, drop_path_rates)):
            if j >= depth - num_attn_blocks:
                self.blocks.append(AttnFFN(channels, ratio, dpr, layer_scale_init_value,
                                           attn_stride, attn_bias_mode, attn_bias_resolution))
            else:
                self.blocks.append(FFN(channels, ratio, dpr, layer_scale_init_value))
        self.with_cp = with_cp

    def forward(self, x):
        x = self.downsample(x)
        for block in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@MODELS.register_module()
class EfficientFormerV2(EfficientFormerBase):
    """EfficientFormerV2 backbone giving multi-scale NCHW maps for FPN-style necks.

    Args:
        arch (str | dict): 's0', 's1', 's2' or 'l', or a dict with keys ``widths`` (4 ints),
            ``depths`` (4 ints), ``num_attn_blocks`` (attention blocks at the end of stages 3 and
            4) and ``mlp_ratios`` (4 sequences, one MLP ratio per block). Defaults to 's0'.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages to output, 0..3 (negative counts from the end).
            Output i has shape (B, widths[i], ceil(H / 2**(i+2)), ceil(W / 2**(i+2))), the stage
            map as it is (no output norm, as in the original). Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and stages 0..k-1.
            Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode during training (the original dense
            recipes do: statistics stay at their ImageNet values). Defaults to False.
        drop_path_rate (float): Stochastic depth, growing linearly over all blocks. Defaults to 0.
        layer_scale_init_value (float): Initial layer scale. Defaults to 1e-5.
        attn_bias_mode (str): 'relative' (offset tables resized to the grid actually seen) or
            'official' (the original dense code's pair-matrix resize, needed by its released
            COCO / ADE20K weights). Defaults to 'relative'.
        attn_bias_resolution (int): Side R of the stage-3 (strided) and stage-4 bias tables: 7
            for ImageNet weights, 25 / 16 for the original COCO / ADE20K weights; the
            downsampling attention's table has side 2R. Defaults to 7.
        with_cp (bool): Activation checkpointing of each block in training. Defaults to False.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads original EfficientFormerV2 ImageNet / COCO / ADE20K files and mmef files (see
            :func:`mmef.checkpoint.load_pretrained`). Defaults to None.

    Example:
        >>> import torch
        >>> from mmef.models import EfficientFormerV2
        >>> model = EfficientFormerV2('s0').eval()
        >>> for out in model(torch.rand(1, 3, 250, 330)):
        ...     print(tuple(out.shape))
        (1, 32, 63, 83)
        (1, 48, 32, 42)
        (1, 96, 16, 21)
        (1, 176, 8, 11)
    """

    arch_settings = {
        's0': dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_attn_blocks=2,
                   mlp_ratios=((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4))),
        's1': dict(widths=(32, 48, 120, 224), depths=(3, 3, 9, 6), num_attn_blocks=2,
                   mlp_ratios=((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4),
                               (4, 4, 3, 3, 4, 4))),
        's2': dict(widths=(32, 64, 144, 288), depths=(4, 4, 12, 8), num_attn_blocks=4,
                   mlp_ratios=((4, ) * 4, (4, ) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
                               (4, 4, 3, 3, 3, 3, 4, 4))),
        'l': dict(widths=(40, 80, 192, 384), depths=(5, 5, 15, 10), num_attn_blocks=6,
                  mlp_ratios=((4, ) * 5, (4, ) * 5,
                              (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
                              (4, 4, 4, 3, 3, 3, 3, 4, 4, 4))),
    }
    arch_keys = ('widths', 'depths', 'num_attn_blocks', 'mlp_ratios')

    def __init__(self,
                 arch='s0',
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
        self.stem = Stem(in_channels, widths[0], act_layer=nn.GELU)
        dpr = self.drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            if i == 0:
                downsample = nn.Identity()
            elif i < 3:
                downsample = ConvNorm(widths[i - 1], widths[i], 3, 2, 1)
            else:
                downsample = AttnDownsample(widths[2], widths[3], attn_bias_mode,
                                            2 * attn_bias_resolution)
            self.stages.append(EfficientFormerV2Stage(
                downsample, widths[i], self.arch['mlp_ratios'][i],
                self.arch['num_attn_blocks'] if i >= 2 else 0, dpr[i], layer_scale_init_value,
                2 if i == 2 else 1, attn_bias_mode, attn_bias_resolution, with_cp))
        self._freeze_stages()

    @classmethod
    def check_arch(cls, arch):
        depths = arch['depths']
        n = arch['num_attn_blocks']
        if not (isinstance(n, int) and 0 <= n <= min(depths[2:])):
            raise ValueError(f'arch["num_attn_blocks"] must be an int in [0, '
                             f'min(depths[2], depths[3])={min(depths[2:])}], got {n!r}')
        ratios = arch['mlp_ratios']
        if (not isinstance(ratios, (list, tuple)) or len(ratios) != cls.num_stages
                or any(not isinstance(r, (list, tuple)) or len(r) != d
                       for r, d in zip(ratios, depths))
                or any(not isinstance(v, (int, float)) or v <= 0 for r in ratios for v in r)):
            raise ValueError(f'arch["mlp_ratios"] must be 4 sequences of positive numbers, one '
                             f'per block (lengths {depths}), got {ratios!r}')
        arch['mlp_ratios'] = tuple(tuple(r) for r in ratios)

    def forward(self, x):
        self.check_input(x)
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                # contiguous NCHW maps whatever memory format the stages run in (channels_last
                # when deployed): mmcv's CPU RoIAlign reads its input as NCHW without looking
                # at strides, and is silently wrong on channels_last maps
                outs.append(x.contiguous())
        return tuple(outs)
