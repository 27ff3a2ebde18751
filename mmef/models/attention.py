"""Learned attention biases of EfficientFormer (V1 and V2) and V1's MB3D attention.

A bias table has shape (num_heads, R * R): entry |dy| * R + |dx| is the bias between a query and a
key token whose grid offset is (dy, dx). For V2's downsampling attention the queries sit on a
stride-2 grid over the keys, and the offset is (|2 * qy - ky|, |2 * qx - kx|) on the key grid. Two
ways to apply a table to a token grid of another size:

* ``'relative'``: resize the (R, R) table as an image (bicubic) to the key grid actually seen and
  index it with the true offsets, so the bias between two tokens depends only on their offset. At
  an R x R grid it is the table itself, e.g. the ImageNet 7x7 bias at a 224x224 input.
* ``'official'``: what the original detection / segmentation code does and what its released
  COCO / ADE20K weights were trained with: expand the table to the (queries, keys) pair matrix of
  its own R x R grid and resize that matrix bicubically to (Nq, Nk). Only exact when the grid is
  R x R; kept to reproduce those weights.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BIAS_MODES = ('relative', 'official')
# Side R of the last-stage bias tables of the original dense models: what their weights need
DENSE_BIAS_RESOLUTIONS = {25: 'COCO Mask R-CNN', 16: 'ADE20K Semantic FPN'}


def offset_index(q_hw, k_hw=None, stride=1, device=None):
    """(Nq, Nk) index |stride * qy - ky| * wk + |stride * qx - kx| for every query of a
    ``q_hw`` grid and key of a ``k_hw`` grid (default: the same grid), both row-major.

    Sizes may be traced 0-dim tensors (ONNX export with dynamic shapes): only broadcasting is
    used, so the index follows the grid actually seen.
    """
    (hq, wq), (hk, wk) = q_hw, (k_hw or q_hw)
    qy, qx = _grid(hq, wq, device)
    ky, kx = _grid(hk, wk, device)
    return (qy[:, None] * stride - ky[None, :]).abs() * wk + \
        (qx[:, None] * stride - kx[None, :]).abs()


def _grid(h, w, device):
    """Row and column of every position of an h x w grid, row-major, as two flat vectors."""
    ys = torch.arange(h, device=device)[:, None]
    xs = torch.arange(w, device=device)[None, :]
    return (ys + 0 * xs).reshape(-1), (xs + 0 * ys).reshape(-1)


def resize_table(table, resolution, hw):
    """Resizes an (heads, R*R) offset table as an R x R image (bicubic) to (heads, h*w), float32.

    Traced sizes (tensors) always go through the resize, which is exact at R x R."""
    h, w = hw
    grid = table.float().reshape(1, -1, resolution, resolution)
    if torch.is_tensor(h) or torch.is_tensor(w) or (h, w) != (resolution, resolution):
        grid = F.interpolate(grid, size=(h, w), mode='bicubic', align_corners=False)
    return grid.flatten(2)[0]


def relative_bias(table, resolution, q_hw, k_hw=None, stride=1):
    """Bias (heads, Nq, Nk): the table resized to the key grid, read at the true offsets."""
    k_hw = tuple(k_hw or q_hw)
    return resize_table(table, resolution, k_hw)[:, offset_index(q_hw, k_hw, stride,
                                                                 table.device)]


def official_bias(table, resolution, num_queries, num_keys=None, stride=1):
    """The original dense code's bias: the pair matrix of the table's own grid (keys R x R,
    queries ceil(R / stride) squared) resized bicubically to (Nq, Nk)."""
    rq = math.ceil(resolution / stride)
    pairs = table.float()[:, offset_index((rq, rq), (resolution, resolution), stride,
                                          table.device)]
    return F.interpolate(pairs[None], size=(num_queries, num_keys or num_queries),
                         mode='bicubic', align_corners=False)[0]


class GridCache(dict):
    """Values computed once per grid size (and device and dtype), for inference.

    ``get_or_compute(sizes, compute, device, dtype)`` returns ``compute(*sizes)`` (``sizes``: a
    tuple of (h, w) grids), converted to ``dtype`` when given, computed without grad on the first
    call for those sizes and that dtype (so bf16 / fp16 inference converts once, not every
    forward). Sizes that are tensors (traced for ONNX export) are never cached: the value is
    then computed in the graph, so an export with dynamic shapes is right at every size."""

    def get_or_compute(self, sizes, compute, device=None, dtype=None):
        def value():
            out = compute(*sizes)
            return out if dtype is None else out.to(dtype)

        if any(torch.is_tensor(v) for hw in sizes for v in hw):
            return value()
        sizes = tuple(tuple(int(v) for v in hw) for hw in sizes)
        key = sizes + (device, dtype)
        if key not in self:
            with torch.no_grad():
                self[key] = value()
        return self[key]


class BiasedAttention(nn.Module):
    """Base of the attention modules: owns the bias table ``bias_table`` and its arithmetic.

    Args:
        num_heads (int): Heads.
        bias_mode (str): 'relative' or 'official', see the module docstring.
        bias_resolution (int): Side R of the table (over the key grid).
        query_stride (int): 2 when the queries sit on a stride-2 grid over the keys (V2's
            downsampling attention), else 1.
        resolution_factor (int): ``bias_resolution`` / the backbone's ``attn_bias_resolution``,
            for messages (2 for V2's downsampling attention, whose keys are twice as dense).

    In eval mode the bias of each grid size is computed once, without grad, and cached; the
    cache is dropped by ``train()``, when a state dict is loaded, and by
    :meth:`clear_bias_cache` (call it after changing ``bias_table`` in place in eval mode).
    """

    def __init__(self, num_heads, bias_mode='relative', bias_resolution=7, query_stride=1,
                 resolution_factor=1):
        super().__init__()
        if bias_mode not in BIAS_MODES:
            raise ValueError(f'attn_bias_mode must be one of {BIAS_MODES}, got {bias_mode!r}')
        self.num_heads = num_heads
        self.bias_mode = bias_mode
        self.bias_resolution = bias_resolution
        self.query_stride = query_stride
        self.resolution_factor = resolution_factor
        self.bias_table = nn.Parameter(torch.zeros(num_heads, bias_resolution**2))
        self._bias_cache = GridCache()

    def clear_bias_cache(self):
        """Forgets the cached biases: the next eval forward recomputes them from the table."""
        self._bias_cache.clear()

    def train(self, mode=True):
        if mode:  # weights may change from now on; eval() keeps the cache (and export's constant)
            self.clear_bias_cache()
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self.clear_bias_cache()
        table = state_dict.get(prefix + 'bias_table')
        if table is not None and table.shape != self.bias_table.shape:
            # mmengine's load_from is non-strict and only warns: say what setting the file needs
            f = self.resolution_factor
            r, own = math.isqrt(table.shape[-1]), self.bias_resolution
            hint = (f" and attn_bias_mode='official' (the original {DENSE_BIAS_RESOLUTIONS[r // f]}"
                    f" weights)" if r % f == 0 and r // f in DENSE_BIAS_RESOLUTIONS else '')
            error_msgs.append(f'{prefix}bias_table is a {r}x{r} attention-bias table in the '
                              f'checkpoint and {own}x{own} in the model: build the backbone '
                              f'with attn_bias_resolution={r // f}{hint}')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _compute_bias(self, q_hw, k_hw):
        if self.bias_mode == 'relative':
            return relative_bias(self.bias_table, self.bias_resolution, q_hw, k_hw,
                                 self.query_stride)
        return official_bias(self.bias_table, self.bias_resolution, q_hw[0] * q_hw[1],
                             k_hw[0] * k_hw[1], self.query_stride)

    def attn_bias(self, q_hw, k_hw=None, dtype=None):
        """(heads, Nq, Nk) bias for queries on a ``q_hw`` grid and keys on ``k_hw`` (default: the
        same grid), in ``dtype`` (default: float32). Differentiable in training; cached per grid
        size and dtype in eval mode. When traced
        (ONNX export), the sizes are tensors and the bias is computed in the graph from them,
        so an export with dynamic shapes is right at every size; with fixed shapes the exporter
        folds it into a constant."""
        k_hw = k_hw or q_hw
        if self.training:
            bias = self._compute_bias(q_hw, k_hw)
            return bias if dtype is None else bias.to(dtype)
        return self._bias_cache.get_or_compute((q_hw, k_hw), self._compute_bias,
                                               self.bias_table.device, dtype)


class Attention(BiasedAttention):
    """Attention over (B, N, C) tokens of an (h, w) grid with a learned offset bias (V1's MB3D).

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
        super().__init__(num_heads, bias_mode, bias_resolution)
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.scale = key_dim**-0.5
        # Per head, the qkv output holds [q (key_dim), k (key_dim), v (val_dim)] side by side.
        self.qkv = nn.Linear(channels, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, channels)

    def extra_repr(self):
        return (f'num_heads={self.num_heads}, key_dim={self.key_dim}, '
                f'bias_mode={self.bias_mode!r}, bias_resolution={self.bias_resolution}')

    def project_qkv(self, x):
        """(B, N, C) tokens -> q, k, v of shape (B, heads, N, key_dim / key_dim / val_dim)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, 2 * self.key_dim + self.val_dim).split(
            [self.key_dim, self.key_dim, self.val_dim], dim=3)
        return tuple(t.transpose(1, 2) for t in (q, k, v))

    def merge_heads(self, x):
        """(B, heads, N, val_dim) attention output -> (B, N, C) through the projection."""
        B, _, N, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(B, N, self.num_heads * self.val_dim))

    def forward(self, x, hw):
        q, k, v = self.project_qkv(x)
        bias = self.attn_bias(hw, dtype=q.dtype)
        # the scale is applied to q and SDPA's own scale set to 1: mmdeploy's rewrite of SDPA
        # reads `scale` as a divisor, torch as a multiplier; 1 means the same to both
        return self.merge_heads(F.scaled_dot_product_attention(q * self.scale, k, v,
                                                               attn_mask=bias, scale=1.0))
