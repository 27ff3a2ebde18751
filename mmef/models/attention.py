"""Multi-head self-attention of EfficientFormer's MB3D blocks and its learned attention bias.

The bias table has shape (num_heads, R * R): entry |dy| * R + |dx| is the bias between two tokens
whose grid offset is (dy, dx). Two ways to apply it to a token grid of another size:

* ``'relative'``: resize the (R, R) table as an image (bicubic) to the grid actually seen and index it
  with the true offsets, so the bias between two tokens depends only on their offset. At an R x R
  grid it is the table itself, e.g. the ImageNet 7x7 bias at a 224x224 input.
* ``'official'``: what the original detection / segmentation code does and what its released
  COCO / ADE20K weights were trained with: expand the table to the (R*R, R*R) pair matrix and resize
  that matrix bicubically to (N, N). Only exact when the grid is R x R; kept to reproduce those weights.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BIAS_MODES = ('relative', 'official')


def offset_index(h, w, device=None):
    """(h*w, h*w) index of |dy| * w + |dx| for every pair of tokens of an h x w grid (row major)."""
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * w + dx


def resize_table(table, resolution, hw):
    """Resizes an (heads, R*R) offset table as an R x R image (bicubic) to (heads, h*w), float32."""
    h, w = hw
    grid = table.float().reshape(1, -1, resolution, resolution)
    if (h, w) != (resolution, resolution):
        grid = F.interpolate(grid, size=(h, w), mode='bicubic', align_corners=False)
    return grid.flatten(2)[0]


def relative_bias(table, resolution, hw):
    """Bias (heads, N, N) for an (h, w) grid: the table resized to the grid, read at true offsets."""
    return resize_table(table, resolution, hw)[:, offset_index(*hw, device=table.device)]


def official_bias(table, resolution, num_tokens):
    """The original dense code's bias: the R x R pair matrix resized bicubically to (N, N)."""
    pairs = table.float()[:, offset_index(resolution, resolution, table.device)]
    return F.interpolate(pairs[None], size=(num_tokens, num_tokens), mode='bicubic',
                         align_corners=False)[0]


class Attention(nn.Module):
    """Attention over (B, N, C) tokens of an (h, w) grid with a learned offset bias.

    Args:
        channels (int): Token width C.
        num_heads (int): Heads. Defaults to 8.
        key_dim (int): Query / key width per head. Defaults to 32.
        attn_ratio (int): Value width per head as a multiple of key_dim. Defaults to 4.
        bias_mode (str): 'relative' or 'official', see the module docstring.
        bias_resolution (int): Side R of the bias table.
    """

    def __init__(self, channels, num_heads=8, key_dim=32, attn_ratio=4, bias_mode='relative',
                 bias_resolution=7):
        super().__init__()
        if bias_mode not in BIAS_MODES:
            raise ValueError(f'attn_bias_mode must be one of {BIAS_MODES}, got {bias_mode!r}')
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.scale = key_dim**-0.5
        # Per head, the qkv output holds [q (key_dim), k (key_dim), v (val_dim)] side by side.
        self.qkv = nn.Linear(channels, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, channels)
        self.bias_mode = bias_mode
        self.bias_resolution = bias_resolution
        self.bias_table = nn.Parameter(torch.zeros(num_heads, bias_resolution**2))
        self._bias_cache = {}

    def extra_repr(self):
        return (f'num_heads={self.num_heads}, key_dim={self.key_dim}, '
                f'bias_mode={self.bias_mode!r}, bias_resolution={self.bias_resolution}')

    def train(self, mode=True):
        if mode:  # weights may change from now on; eval() keeps the cache (and export's constant)
            self._bias_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._bias_cache.clear()
        table = state_dict.get(prefix + 'bias_table')
        if table is not None and table.shape != self.bias_table.shape:
            # mmengine's load_from is non-strict and only warns: say what setting the file needs
            r, own = math.isqrt(table.shape[-1]), self.bias_resolution
            hint = (" and attn_bias_mode='official' (the original COCO / ADE20K weights)"
                    if r in (16, 25) else '')
            error_msgs.append(f'{prefix}bias_table is a {r}x{r} attention-bias table in the '
                              f'checkpoint and {own}x{own} in the model: build the backbone '
                              f'with attn_bias_resolution={r}{hint}')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _compute_bias(self, hw):
        if self.bias_mode == 'relative':
            return relative_bias(self.bias_table, self.bias_resolution, hw)
        return official_bias(self.bias_table, self.bias_resolution, hw[0] * hw[1])

    def attn_bias(self, hw):
        """(heads, N, N) bias for an (h, w) grid.

        Differentiable in training; in eval mode computed once per grid size without grad and
        cached (the cache is dropped by ``train()`` and when a state dict is loaded).
        """
        if self.training:
            return self._compute_bias(hw)
        hw = tuple(int(v) for v in hw)  # plain ints: traced (ONNX export) sizes are tensors
        key = (hw, self.bias_table.device)
        if key not in self._bias_cache:
            with torch.no_grad():
                self._bias_cache[key] = self._compute_bias(hw)
        return self._bias_cache[key]

    def forward(self, x, hw):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, 2 * self.key_dim + self.val_dim).split(
            [self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        bias = self.attn_bias(hw).to(q.dtype)
        if _use_inplace_attention(q):
            x = self._attend_inplace(q, k, v, bias)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.num_heads * self.val_dim))

    def _attend_inplace(self, q, k, v, bias):
        """softmax(q k^T * scale + bias) v per sample, the bias added by the GEMM and the softmax
        done in place: one (heads, N, N) buffer. With value width != key width CPU SDPA falls
        back to its unfused math path, which is slower (docs/benchmark.md)."""
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        for i in range(q.shape[0]):
            logits = torch.baddbmm(bias, q[i], k[i].transpose(1, 2), alpha=self.scale)
            torch.softmax(logits, -1, out=logits)
            torch.bmm(logits, v[i], out=out[i])
        return out


def _use_inplace_attention(q):
    """The in-place path is for CPU inference in eager mode; autograd, tracing / export and
    other devices use scaled_dot_product_attention."""
    return (q.device.type == 'cpu' and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())
