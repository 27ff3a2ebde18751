"""Original-format EfficientFormerV2 checkpoints and an independent plain-torch forward of them.

Written from the facts of the original code (snap-research/EfficientFormer,
models/efficientformer_v2.py and detection|segmentation/backbonev2.py), without mmef:

* :func:`make_original_v2` builds an original-format backbone state dict (ImageNet layout with
  ``attention_biases`` tables, or the dense layout with zero placeholders and learned
  ``attention_biases_seg`` tables for an R x R last-stage grid) with non-trivial random values;
* :func:`original_v2_forward` runs it with ``torch.nn.functional`` ops: ``'imagenet'`` bias
  arithmetic (table indexed by the offsets of the fixed grid; 224x224 only), ``'dense'`` (the
  (queries, keys) pair matrix resized bicubically to the real token counts, every forward; the
  original's ``H // 2`` reshapes, so sizes must be multiples of 32) or ``'relative'`` (mmef's
  default, restated: the table resized as an image to the key grid, read at true offsets).
"""
import math

import torch
import torch.nn.functional as F

from _original_ref import _Filler, relative_grid_bias

ARCHS = {  # widths, depths, attention blocks at the end of stages 3 and 4, MLP ratios
    's0': ((32, 48, 96, 176), (2, 2, 6, 4), 2, ([4, 4], [4, 4], [4, 3, 3, 3, 4, 4], [4, 3, 3, 4])),
    's1': ((32, 48, 120, 224), (3, 3, 9, 6), 2,
           ([4] * 3, [4] * 3, [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4])),
    's2': ((32, 64, 144, 288), (4, 4, 12, 8), 4,
           ([4] * 4, [4] * 4, [4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4])),
    'l': ((40, 80, 192, 384), (5, 5, 15, 10), 6,
          ([4] * 5, [4] * 5, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4],
           [4, 4, 4, 3, 3, 3, 3, 4, 4, 4])),
}
HEADS = 8
KEY_DIM, VAL_DIM = 32, 128  # Attention4D
DS_KEY_DIM, DS_VAL_DIM = 16, 64  # Attention4DDownsample


def first_seen_index(q_side, k_side, stride):
    """(Nq, Nk) index of the original code: offsets (|stride*qy - ky|, |stride*qx - kx|)
    numbered in the order first met, queries on a q_side grid, keys on a k_side grid."""
    offsets, idx = {}, []
    for qy in range(q_side):
        for qx in range(q_side):
            for ky in range(k_side):
                for kx in range(k_side):
                    off = (abs(qy * stride - ky), abs(qx * stride - kx))
                    offsets.setdefault(off, len(offsets))
                    idx.append(offsets[off])
    return torch.tensor(idx).view(q_side * q_side, k_side * k_side), len(offsets)


def _dw(f, sd, name, c):
    sd[f'{name}.weight'] = f.randn(c, 1, 3, 3, std=1 / 3)
    sd[f'{name}.bias'] = f.randn(c, std=0.1)


def _attn_table(f, sd, p, q_side, k_side, stride, resolution):
    """ImageNet: 'attention_biases' of the 224 grid. Dense: zero placeholder + idxs of ones,
    learned 'attention_biases_seg' of the resolution grid with its first-seen idxs."""
    ds = stride == 2 and k_side != q_side
    if resolution is None:
        idx, n = first_seen_index(q_side, k_side, stride)
        sd[f'{p}.attention_biases'] = f.randn(HEADS, n)
        sd[f'{p}.attention_bias_idxs'] = idx
        return
    big = 2 * resolution if ds else resolution
    q = resolution
    idx, n = first_seen_index(q, big, 2 if ds else 1)
    sd[f'{p}.attention_biases'] = torch.zeros(HEADS, 196 if ds else 49)
    sd[f'{p}.attention_bias_idxs'] = torch.ones(49, 196 if ds else 49, dtype=torch.long)
    sd[f'{p}.attention_biases_seg'] = f.randn(HEADS, n)
    sd[f'{p}.attention_bias_idxs_seg'] = idx


def make_original_v2(arch, resolution=None, seed=0, num_classes=1000):
    """Original-format V2 backbone state dict (``resolution`` None: ImageNet layout with the
    classifier; R: dense layout for an R x R last-stage grid)."""
    widths, depths, n_attn, ratios = ARCHS[arch]
    f, sd = _Filler(seed), {}
    f.conv(sd, 'patch_embed.0', widths[0] // 2, 3, 3)
    f.bn(sd, 'patch_embed.1', widths[0] // 2)
    f.conv(sd, 'patch_embed.3', widths[0], widths[0] // 2, 3)
    f.bn(sd, 'patch_embed.4', widths[0])
    for s in range(4):
        c = widths[s]
        for b in range(depths[s]):
            p = f'network.{2 * s}.{b}'
            hid = int(c * ratios[s][b])
            f.conv(sd, f'{p}.mlp.fc1', hid, c, 1)
            f.bn(sd, f'{p}.mlp.norm1', hid)
            _dw(f, sd, f'{p}.mlp.mid', hid)
            f.bn(sd, f'{p}.mlp.mid_norm', hid)
            f.conv(sd, f'{p}.mlp.fc2', c, hid, 1)
            f.bn(sd, f'{p}.mlp.norm2', c)
            sd[f'{p}.layer_scale_2'] = f.scale(c).view(c, 1, 1)
            if s >= 2 and b >= depths[s] - n_attn:
                sd[f'{p}.layer_scale_1'] = f.scale(c).view(c, 1, 1)
                t = f'{p}.token_mixer'
                if s == 2:
                    _dw(f, sd, f'{t}.stride_conv.0', c)
                    f.bn(sd, f'{t}.stride_conv.1', c)
                for name, out in (('q', HEADS * KEY_DIM), ('k', HEADS * KEY_DIM),
                                  ('v', HEADS * VAL_DIM)):
                    f.conv(sd, f'{t}.{name}.0', out, c, 1)
                    f.bn(sd, f'{t}.{name}.1', out)
                _dw(f, sd, f'{t}.v_local.0', HEADS * VAL_DIM)
                f.bn(sd, f'{t}.v_local.1', HEADS * VAL_DIM)
                for th in ('talking_head1', 'talking_head2'):
                    sd[f'{t}.{th}.weight'] = f.randn(HEADS, HEADS, 1, 1, std=HEADS**-0.5)
                    sd[f'{t}.{th}.bias'] = f.randn(HEADS, std=0.1)
                f.conv(sd, f'{t}.proj.1', c, HEADS * VAL_DIM, 1)
                f.bn(sd, f'{t}.proj.2', c)
                _attn_table(f, sd, t, 7, 7, 1, resolution)
        if s < 2:
            f.conv(sd, f'network.{2 * s + 1}.proj', widths[s + 1], c, 3)
            f.bn(sd, f'network.{2 * s + 1}.norm', widths[s + 1])
        elif s == 2:
            p, c2 = 'network.5', widths[3]
            f.conv(sd, f'{p}.conv', c2, c, 3)
            f.bn(sd, f'{p}.bn', c2)
            a = f'{p}.attn'
            _dw(f, sd, f'{a}.q.local.0', c)
            f.conv(sd, f'{a}.q.proj.0', HEADS * DS_KEY_DIM, c, 1)
            f.bn(sd, f'{a}.q.proj.1', HEADS * DS_KEY_DIM)
            f.conv(sd, f'{a}.k.0', HEADS * DS_KEY_DIM, c, 1)
            f.bn(sd, f'{a}.k.1', HEADS * DS_KEY_DIM)
            f.conv(sd, f'{a}.v.0', HEADS * DS_VAL_DIM, c, 1)
            f.bn(sd, f'{a}.v.1', HEADS * DS_VAL_DIM)
            _dw(f, sd, f'{a}.v_local.0', HEADS * DS_VAL_DIM)
            f.bn(sd, f'{a}.v_local.1', HEADS * DS_VAL_DIM)
            f.conv(sd, f'{a}.proj.1', c2, HEADS * DS_VAL_DIM, 1)
            f.bn(sd, f'{a}.proj.2', c2)
            _attn_table(f, sd, a, 7, 14, 2, resolution)
    if resolution is None:
        f.bn(sd, 'norm', widths[3])
        f.linear(sd, 'head', num_classes, widths[3])
        f.linear(sd, 'dist_head', num_classes, widths[3])
    return sd


# ---------------------------------------------------------------- plain forward
def _bn(x, sd, p):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'],
                        sd[f'{p}.bias'], training=False, eps=1e-5)


def _conv(x, sd, p, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[f'{p}.weight'], sd[f'{p}.bias'], stride=stride, padding=padding,
                    groups=groups)


def _bias(sd, p, q_hw, k_hw, stride, mode):
    nq, nk = q_hw[0] * q_hw[1], k_hw[0] * k_hw[1]
    if mode == 'imagenet':
        return sd[f'{p}.attention_biases'][:, sd[f'{p}.attention_bias_idxs']]
    if mode == 'dense':
        pair = sd[f'{p}.attention_biases_seg'][:, sd[f'{p}.attention_bias_idxs_seg']]
        return F.interpolate(pair[None], size=(nq, nk), mode='bicubic')[0]
    table = sd[f'{p}.attention_biases']  # relative, from an ImageNet table (first-seen order =
    if stride == 1:                       # |dy| * side + |dx| for these grids)
        return relative_grid_bias(table, q_hw)
    side = round(table.shape[-1]**0.5)
    grid = F.interpolate(table.reshape(1, HEADS, side, side), size=k_hw, mode='bicubic',
                         align_corners=False)[0]
    qy, qx = torch.meshgrid(torch.arange(q_hw[0]) * 2, torch.arange(q_hw[1]) * 2, indexing='ij')
    ky, kx = torch.meshgrid(torch.arange(k_hw[0]), torch.arange(k_hw[1]), indexing='ij')
    dy = (qy.flatten()[:, None] - ky.flatten()[None, :]).abs()
    dx = (qx.flatten()[:, None] - kx.flatten()[None, :]).abs()
    return grid[:, dy, dx]


def _split(x, heads):  # (B, heads*d, h, w) -> (B, heads, N, d), channels head by head
    b, c, h, w = x.shape
    return x.flatten(2).reshape(b, heads, c // heads, h * w).permute(0, 1, 3, 2)


def _attention4d(x, sd, t, strided, mode):
    B, C, H, W = x.shape
    if strided:
        x = _bn(_conv(x, sd, f'{t}.stride_conv.0', 2, 1, groups=C), sd, f'{t}.stride_conv.1')
        h, w = (H // 2, W // 2) if mode != 'relative' else tuple(x.shape[-2:])
    else:
        h, w = H, W
    q = _split(_bn(_conv(x, sd, f'{t}.q.0'), sd, f'{t}.q.1'), HEADS)
    k = _split(_bn(_conv(x, sd, f'{t}.k.0'), sd, f'{t}.k.1'), HEADS)
    v = _bn(_conv(x, sd, f'{t}.v.0'), sd, f'{t}.v.1')
    v_local = _bn(_conv(v, sd, f'{t}.v_local.0', 1, 1, groups=v.shape[1]), sd, f'{t}.v_local.1')
    v = _split(v, HEADS)
    attn = (q @ k.transpose(-2, -1)) * KEY_DIM**-0.5 + _bias(sd, t, (h, w), (h, w), 1, mode)
    attn = _conv(attn, sd, f'{t}.talking_head1').softmax(dim=-1)
    attn = _conv(attn, sd, f'{t}.talking_head2')
    out = (attn @ v).transpose(2, 3).reshape(B, HEADS * VAL_DIM, h, w) + v_local
    if strided:
        out = F.interpolate(out, scale_factor=2, mode='bilinear') if mode != 'relative' else \
            F.interpolate(out, size=(H, W), mode='bilinear', align_corners=False)
    return _bn(_conv(F.gelu(out), sd, f'{t}.proj.1'), sd, f'{t}.proj.2')


def _downsample_attention(x, sd, a, mode):
    B, C, H, W = x.shape
    q = _conv(x, sd, f'{a}.q.local.0', 2, 1, groups=C) + F.avg_pool2d(x, 1, 2, 0)
    q = _bn(_conv(q, sd, f'{a}.q.proj.0'), sd, f'{a}.q.proj.1')
    hq, wq = q.shape[-2:]
    q = _split(q, HEADS)
    k = _split(_bn(_conv(x, sd, f'{a}.k.0'), sd, f'{a}.k.1'), HEADS)
    v = _bn(_conv(x, sd, f'{a}.v.0'), sd, f'{a}.v.1')
    v_local = _bn(_conv(v, sd, f'{a}.v_local.0', 2, 1, groups=v.shape[1]), sd, f'{a}.v_local.1')
    v = _split(v, HEADS)
    attn = (q @ k.transpose(-2, -1)) * DS_KEY_DIM**-0.5 + _bias(sd, a, (hq, wq), (H, W), 2, mode)
    out = (attn.softmax(dim=-1) @ v).transpose(2, 3).reshape(B, HEADS * DS_VAL_DIM, hq, wq)
    return _bn(_conv(F.gelu(out + v_local), sd, f'{a}.proj.1'), sd, f'{a}.proj.2')


def _mlp(x, sd, p):
    h = F.gelu(_bn(_conv(x, sd, f'{p}.fc1'), sd, f'{p}.norm1'))
    h = F.gelu(_bn(_conv(h, sd, f'{p}.mid', 1, 1, groups=h.shape[1]), sd, f'{p}.mid_norm'))
    return _bn(_conv(h, sd, f'{p}.fc2'), sd, f'{p}.norm2')


def original_v2_forward(sd, x, mode):
    """The four stage maps of the original V2 backbone (eval mode, BN statistics used).

    Args:
        mode (str): 'imagenet' (224x224 only), 'dense' (sizes multiple of 32) or 'relative'.
    """
    x = F.gelu(_bn(_conv(x, sd, 'patch_embed.0', 2, 1), sd, 'patch_embed.1'))
    x = F.gelu(_bn(_conv(x, sd, 'patch_embed.3', 2, 1), sd, 'patch_embed.4'))
    outs = []
    for s in range(4):
        if s in (1, 2):
            p = f'network.{2 * s - 1}'
            x = _bn(_conv(x, sd, f'{p}.proj', 2, 1), sd, f'{p}.norm')
        elif s == 3:
            x = _bn(_conv(x, sd, 'network.5.conv', 2, 1), sd, 'network.5.bn') + \
                _downsample_attention(x, sd, 'network.5.attn', mode)
        b = 0
        while f'network.{2 * s}.{b}.layer_scale_2' in sd:
            p = f'network.{2 * s}.{b}'
            if f'{p}.layer_scale_1' in sd:
                x = x + sd[f'{p}.layer_scale_1'] * _attention4d(x, sd, f'{p}.token_mixer', s == 2,
                                                                mode)
            x = x + sd[f'{p}.layer_scale_2'] * _mlp(x, sd, f'{p}.mlp')
            b += 1
        outs.append(x)
    return outs


def classify(sd, x):
    """ImageNet logits of the original classification model (eval: mean of both heads)."""
    feat = _bn(original_v2_forward(sd, x, 'imagenet')[-1], sd, 'norm').flatten(2).mean(-1)
    return (F.linear(feat, sd['head.weight'], sd['head.bias'])
            + F.linear(feat, sd['dist_head.weight'], sd['dist_head.bias'])) / 2


assert math.isclose(DS_VAL_DIM, 4 * DS_KEY_DIM)
