"""Original-format EfficientFormer checkpoints and an independent plain-torch forward of them.

Written from the design brief, without mmef: nothing here imports mmef, so the tests compare mmef
against an independent re-computation of the original arithmetic.

* :func:`make_original_backbone` builds an original-format backbone state dict (ImageNet layout, or
  the dense COCO / ADE20K layout with ``attention_biases_seg`` and norm0/2/4/6) filled with
  non-trivial random values: BN statistics, O(1) layer scales, random attention tables.
* :func:`original_forward` runs the dense backbone of such a dict with plain ``torch.nn.functional``
  ops, reproducing the original pair-matrix attention bias (bicubic resize of the (R*R, R*R)
  matrix to (N, N)).
* :func:`save_mmcv1_checkpoint` / :func:`save_imagenet_checkpoint` write files shaped like the
  released ones (mmcv 1.x runner checkpoint; DeiT-style ImageNet training checkpoint).
"""
import argparse
import functools

import numpy as np
import torch
import torch.nn.functional as F

ARCHS = {  # widths, blocks per stage, attention (3D) blocks at the end of the last stage
    'l1': ((48, 96, 224, 448), (3, 2, 6, 4), 1),
    'l3': ((64, 128, 320, 512), (4, 4, 12, 6), 4),
    'l7': ((96, 192, 384, 768), (6, 6, 18, 8), 8),
}
HEADS, KEY_DIM, VAL_DIM = 8, 32, 128


def _pair_index(r):
    """(r*r, r*r) index of the offset table, numbered in first-seen order as the original does."""
    return _pair_index_cached(r).clone()


@functools.lru_cache(maxsize=None)
def _pair_index_cached(r):
    points = [(a, b) for a in range(r) for b in range(r)]
    offsets, idx = {}, []
    for p in points:
        for q in points:
            off = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            offsets.setdefault(off, len(offsets))
            idx.append(offsets[off])
    return torch.tensor(idx, dtype=torch.long).view(len(points), len(points))


class _Filler:
    """Random tensors with scales that keep a deep network's activations finite and varied."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape, std=1.):
        return torch.randn(*shape, generator=self.g) * std

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.g)

    def conv(self, sd, name, cout, cin, k):
        sd[f'{name}.weight'] = self.randn(cout, cin, k, k, std=(cin * k * k)**-0.5)
        sd[f'{name}.bias'] = self.randn(cout, std=0.1)

    def linear(self, sd, name, cout, cin):
        sd[f'{name}.weight'] = self.randn(cout, cin, std=cin**-0.5)
        sd[f'{name}.bias'] = self.randn(cout, std=0.1)

    def bn(self, sd, name, c):
        sd[f'{name}.weight'] = self.uniform(0.5, 1.5, c)
        sd[f'{name}.bias'] = self.randn(c, std=0.1)
        sd[f'{name}.running_mean'] = self.randn(c, std=0.1)
        sd[f'{name}.running_var'] = self.uniform(0.5, 2.0, c)
        sd[f'{name}.num_batches_tracked'] = torch.tensor(1000, dtype=torch.long)

    def norm(self, sd, name, c):  # LayerNorm / GroupNorm affine
        sd[f'{name}.weight'] = self.uniform(0.5, 1.5, c)
        sd[f'{name}.bias'] = self.randn(c, std=0.1)

    def scale(self, c):
        return self.uniform(0.5, 1.5, c)


def make_original_backbone(arch, resolution=None, seed=0, num_classes=1000):
    """Original-format backbone state dict with random values.

    Args:
        arch (str): 'l1', 'l3' or 'l7'.
        resolution (int | None): None for the ImageNet layout (real 7x7 ``attention_biases``,
            classifier ``norm`` / ``head`` / ``dist_head``); R for the dense layout (placeholder
            ``attention_biases`` zeros (8, 49) and ``attention_bias_idxs`` ones (49, 49), learned
            ``attention_biases_seg`` (8, R*R) with ``attention_bias_idxs_seg``, output GroupNorms
            norm0/2/4/6).
    """
    widths, depths, num_vit = ARCHS[arch]
    fill, sd = _Filler(seed), {}
    fill.conv(sd, 'patch_embed.0', widths[0] // 2, 3, 3)
    fill.bn(sd, 'patch_embed.1', widths[0] // 2)
    fill.conv(sd, 'patch_embed.3', widths[0], widths[0] // 2, 3)
    fill.bn(sd, 'patch_embed.4', widths[0])
    for s in range(4):
        c, net = widths[s], 2 * s
        slot = 0
        if s == 3 and num_vit == depths[3]:
            slot = 1  # flatten first
        for b in range(depths[s]):
            p = f'network.{net}.{slot}'
            if s == 3 and depths[3] - b <= num_vit:  # 3D block
                sd[f'{p}.layer_scale_1'] = fill.scale(c)
                sd[f'{p}.layer_scale_2'] = fill.scale(c)
                fill.norm(sd, f'{p}.norm1', c)
                t = f'{p}.token_mixer'
                if resolution is None:
                    sd[f'{t}.attention_biases'] = fill.randn(HEADS, 49)
                    sd[f'{t}.attention_bias_idxs'] = _pair_index(7)
                else:
                    sd[f'{t}.attention_biases_seg'] = fill.randn(HEADS, resolution**2)
                    sd[f'{t}.attention_biases'] = torch.zeros(HEADS, 49)
                    sd[f'{t}.attention_bias_idxs'] = torch.ones(49, 49, dtype=torch.long)
                    sd[f'{t}.attention_bias_idxs_seg'] = _pair_index(resolution)
                fill.linear(sd, f'{t}.qkv', HEADS * (2 * KEY_DIM + VAL_DIM), c)
                fill.linear(sd, f'{t}.proj', c, HEADS * VAL_DIM)
                fill.norm(sd, f'{p}.norm2', c)
                fill.linear(sd, f'{p}.mlp.fc1', 4 * c, c)
                fill.linear(sd, f'{p}.mlp.fc2', c, 4 * c)
            else:  # 4D block
                sd[f'{p}.layer_scale_1'] = fill.scale(c)
                sd[f'{p}.layer_scale_2'] = fill.scale(c)
                fill.conv(sd, f'{p}.mlp.fc1', 4 * c, c, 1)
                fill.conv(sd, f'{p}.mlp.fc2', c, 4 * c, 1)
                fill.bn(sd, f'{p}.mlp.norm1', 4 * c)
                fill.bn(sd, f'{p}.mlp.norm2', c)
                if s == 3 and depths[3] - b - 1 == num_vit:
                    slot += 1  # the flatten slot right after the last 4D block
            slot += 1
        if s < 3:
            fill.conv(sd, f'network.{net + 1}.proj', widths[s + 1], c, 3)
            fill.bn(sd, f'network.{net + 1}.norm', widths[s + 1])
    if resolution is None:
        fill.norm(sd, 'norm', widths[3])
        fill.linear(sd, 'head', num_classes, widths[3])
        fill.linear(sd, 'dist_head', num_classes, widths[3])
    else:
        for s in range(4):
            fill.norm(sd, f'norm{2 * s}', widths[s])
    return sd


# ---------------------------------------------------------------- plain forward of the original
def _bn(x, sd, p):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'],
                        sd[f'{p}.bias'], training=False, eps=1e-5)


def _conv(x, sd, p, stride=1, padding=0):
    return F.conv2d(x, sd[f'{p}.weight'], sd[f'{p}.bias'], stride=stride, padding=padding)


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f'{p}.weight'], sd[f'{p}.bias'], eps=1e-5)


def _lin(x, sd, p):
    return F.linear(x, sd[f'{p}.weight'], sd[f'{p}.bias'])


def relative_grid_bias(table, hw):
    """mmef's default 'relative' bias, restated here without mmef: the (heads, R*R) offset
    table read as an R x R image, resized bicubically (align_corners=False) to the (h, w) token
    grid, then looked up at the true offsets (|dy|, |dx|) of every token pair (row-major)."""
    h, w = hw
    r = round(table.shape[-1]**0.5)
    grid = table.reshape(1, table.shape[0], r, r)
    if (h, w) != (r, r):
        grid = F.interpolate(grid, size=(h, w), mode='bicubic', align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    return grid[0][:, (ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs()]


def _attention(x, sd, p, hw=None, relative=False):
    B, N, _ = x.shape
    qkv = _lin(x, sd, f'{p}.qkv').reshape(B, N, HEADS, -1)
    q, k, v = qkv.split([KEY_DIM, KEY_DIM, VAL_DIM], dim=3)
    q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    logits = (q @ k.transpose(-2, -1)) * KEY_DIM**-0.5
    if relative:  # mmef's default mode on an ImageNet table
        bias = relative_grid_bias(sd[f'{p}.attention_biases'], hw)
    elif f'{p}.attention_biases_seg' in sd:  # dense files: resize the pair matrix to (N, N)
        pair = sd[f'{p}.attention_biases_seg'][:, sd[f'{p}.attention_bias_idxs_seg']]
        bias = F.interpolate(pair.unsqueeze(0), size=(N, N), mode='bicubic')
    else:  # ImageNet files: only defined on the 7x7 grid
        if N != 49:
            raise ValueError(f'ImageNet attention bias needs a 7x7 grid, got {N} tokens')
        bias = sd[f'{p}.attention_biases'][:, sd[f'{p}.attention_bias_idxs']]
    attn = (logits + bias).softmax(dim=-1)
    return _lin((attn @ v).transpose(1, 2).reshape(B, N, HEADS * VAL_DIM), sd, f'{p}.proj')


def _block4d(x, sd, p):
    pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = x + sd[f'{p}.layer_scale_1'].view(1, -1, 1, 1) * (pooled - x)
    h = F.gelu(_bn(_conv(x, sd, f'{p}.mlp.fc1'), sd, f'{p}.mlp.norm1'))
    h = _bn(_conv(h, sd, f'{p}.mlp.fc2'), sd, f'{p}.mlp.norm2')
    return x + sd[f'{p}.layer_scale_2'].view(1, -1, 1, 1) * h


def _block3d(x, sd, p, hw, relative):
    x = x + sd[f'{p}.layer_scale_1'] * _attention(_ln(x, sd, f'{p}.norm1'), sd,
                                                  f'{p}.token_mixer', hw, relative)
    h = _lin(F.gelu(_lin(_ln(x, sd, f'{p}.norm2'), sd, f'{p}.mlp.fc1')), sd, f'{p}.mlp.fc2')
    return x + sd[f'{p}.layer_scale_2'] * h


def _run(sd, x, relative=False):
    """Runs the original network's stem and stages, yielding (net index, x, (B, C, H, W)) after
    each stage. Slots of ``network.{0,2,4,6}`` are visited in order; a slot without parameters is
    the flatten, after which x holds (B, N, C) tokens. ``relative``: attention biases from
    :func:`relative_grid_bias` (mmef's default mode) instead of the original arithmetic."""
    x = F.relu(_bn(_conv(x, sd, 'patch_embed.0', 2, 1), sd, 'patch_embed.1'))
    x = F.relu(_bn(_conv(x, sd, 'patch_embed.3', 2, 1), sd, 'patch_embed.4'))
    for net in range(7):
        if net % 2:
            x = _bn(_conv(x, sd, f'network.{net}.proj', 2, 1), sd, f'network.{net}.norm')
            continue
        shape = tuple(x.shape)
        slots = {int(k.split('.')[2]) for k in sd if k.startswith(f'network.{net}.')}
        for slot in range(max(slots) + 1):
            p = f'network.{net}.{slot}'
            if f'{p}.mlp.norm1.weight' in sd:
                x = _block4d(x, sd, p)
            elif f'{p}.norm1.weight' in sd:
                x = _block3d(x, sd, p, shape[-2:], relative)
            else:
                x = x.flatten(2).transpose(1, 2)
        yield net, x, shape


def original_forward(sd, x, relative=False):
    """The four normalised stage outputs of the original dense backbone (eval mode).

    ``sd`` is an original-format backbone state dict with output norms norm0/2/4/6; without
    them (ImageNet files) the output norms have their initial affine (weight 1, bias 0), as in a
    backbone freshly initialised from such a file. ``relative``: mmef's default attention bias
    (:func:`relative_grid_bias` of the ImageNet table) instead of the original arithmetic.
    """
    outs = []
    for net, feat, shape in _run(sd, x, relative):
        if feat.dim() == 3:
            feat = feat.transpose(1, 2).reshape(shape)
        outs.append(F.group_norm(feat, 1, sd.get(f'norm{net}.weight'), sd.get(f'norm{net}.bias'),
                                 eps=1e-5))
    return outs


# ---------------------------------------------------------------- files shaped like the released
def save_mmcv1_checkpoint(path, state_dict):
    """An mmcv 1.x runner checkpoint: meta (with numpy scalars), state_dict, AdamW state."""
    names = list(state_dict)[:3]
    optimizer = {
        'state': {i: {'step': torch.tensor(1000.), 'exp_avg': torch.zeros_like(state_dict[n]),
                      'exp_avg_sq': torch.zeros_like(state_dict[n])} for i, n in enumerate(names)},
        'param_groups': [{'lr': 2e-4, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 1e-4,
                          'amsgrad': False, 'params': list(range(len(names)))}],
    }
    meta = {'mmcv_version': '1.4.0', 'time': 'Sat Jun  4 01:02:03 2022', 'epoch': 12,
            'iter': 87960, 'seed': np.int64(0), 'lr': np.float64(2e-6), 'exp_name': 'x.py',
            'config': "model = dict(type='MaskRCNN')", 'CLASSES': ('person', 'bicycle')}
    torch.save({'meta': meta, 'state_dict': dict(state_dict), 'optimizer': optimizer}, path)


def save_imagenet_checkpoint(path, state_dict):
    """The original ImageNet training checkpoint: model, optimizer, lr_scheduler, epoch, args."""
    args = argparse.Namespace(model='efficientformer_l1', lr=1e-3, epochs=300,
                              distillation_type='hard')
    torch.save({'model': dict(state_dict), 'optimizer': {'state': {}, 'param_groups': []},
                'lr_scheduler': {'last_epoch': 299}, 'epoch': 299, 'args': args}, path)
