"""Building blocks of EfficientFormer: conv-BN units, stem, MLPs, layer scale, drop path (shared
by V1 and V2) and V1's 4D (MB4D) and 3D (MB3D) blocks."""
import torch
import torch.nn as nn

from .attention import Attention


class ConvNorm(nn.Module):
    """Conv2d (with bias, as in the original) followed by BatchNorm; foldable for deploy."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class Stem(nn.Module):
    """Two stride-2 conv3x3-BN-act units: (B, 3, H, W) -> (B, C, H/4, W/4) (ReLU in V1, GELU in
    V2)."""

    def __init__(self, in_channels, out_channels, act_layer=nn.ReLU):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels // 2, 3, 2, 1)
        self.conv2 = ConvNorm(out_channels // 2, out_channels, 3, 2, 1)
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when p is 0)."""

    def __init__(self, p=0.):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0. or not self.training:
            return x
        keep = 1. - self.p
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f'p={self.p}'


class LayerScale(nn.Module):
    """Per-channel scale; `channel_dim` is 1 for NCHW maps and -1 for (B, N, C) tokens."""

    def __init__(self, channels, init_value, channel_dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, ), float(init_value)))
        self.channel_dim = channel_dim

    def forward(self, x):
        if self.channel_dim == 1:
            return x * self.gamma.view(1, -1, 1, 1)
        return x * self.gamma


class ConvMlp(nn.Module):
    """1x1 conv MLP on NCHW maps: ConvNorm -> GELU -> ConvNorm (V1); with ``mid_conv`` a
    depthwise 3x3 ConvNorm -> GELU sits in the middle (V2)."""

    def __init__(self, channels, hidden_channels, mid_conv=False):
        super().__init__()
        self.fc1 = ConvNorm(channels, hidden_channels)
        self.act = nn.GELU()
        self.mid = ConvNorm(hidden_channels, hidden_channels, 3, 1, 1, groups=hidden_channels) \
            if mid_conv else None
        self.fc2 = ConvNorm(hidden_channels, channels)

    def forward(self, x):
        x = self.act(self.fc1(x))
        if self.mid is not None:
            x = self.act(self.mid(x))
        return self.fc2(x)


class Mlp(nn.Module):
    """Linear MLP on (B, N, C) tokens."""

    def __init__(self, channels, hidden_channels):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MB4D(nn.Module):
    """4D block on NCHW maps: pooling token mixer and a conv MLP, each with a layer scale."""

    def __init__(self, channels, mlp_ratio=4, drop_path=0., layer_scale_init_value=1e-5):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ls1 = LayerScale(channels, layer_scale_init_value, channel_dim=1)
        self.mlp = ConvMlp(channels, channels * mlp_ratio)
        self.ls2 = LayerScale(channels, layer_scale_init_value, channel_dim=1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.pool(x) - x))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class MB3D(nn.Module):
    """3D block on (B, N, C) tokens: multi-head attention with a learned bias and an MLP."""

    def __init__(self, channels, mlp_ratio=4, drop_path=0., layer_scale_init_value=1e-5,
                 attn_bias_mode='relative', attn_bias_resolution=7):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = Attention(channels, bias_mode=attn_bias_mode,
                              bias_resolution=attn_bias_resolution)
        self.ls1 = LayerScale(channels, layer_scale_init_value, channel_dim=-1)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, channels * mlp_ratio)
        self.ls2 = LayerScale(channels, layer_scale_init_value, channel_dim=-1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, hw):
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), hw)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

