"""Original EfficientFormer ImageNet checkpoints for tests, and a plain re-computation of them.

Everything here is written from the published layout (keys as in the original ``models/
efficientformer.py``) and the paper's arithmetic, in plain torch functions, without mmef: it is the
reference that mmef's key mapping and modules are checked against.
"""
import argparse

import torch
import torch.nn.functional as F

ARCHS = {'l1': ((48, 96, 224, 448), (3, 2, 6, 4), 1),
         'l3': ((64, 128, 320, 512), (4, 4, 12, 6), 4),
         'l7': ((96, 192, 384, 768), (6, 6, 18, 8), 8)}
HEADS, KEY_DIM, VAL_DIM = 8, 32, 128


def _bn(sd, name, c, g):
    sd[f'{name}.weight'] = torch.rand(c, generator=g) + 0.5
    sd[f'{name}.bias'] = torch.randn(c, generator=g) * 0.1
    sd[f'{name}.running_mean'] = torch.randn(c, generator=g) * 0.1
    sd[f'{name}.running_var'] = torch.rand(c, generator=g) + 0.5
    sd[f'{name}.num_batches_tracked'] = torch.tensor(1000)


def _lin(sd, name, cin, cout, g, conv=None):
    shape = (cout, cin) if conv is None else (cout, cin, conv, conv)
    fan_in = cin * (conv or 1)**2
    sd[f'{name}.weight'] = torch.randn(*shape, generator=g) / fan_in**0.5
    sd[f'{name}.bias'] = torch.randn(cout, generator=g) * 0.1


def imagenet_state_dict(arch, seed=0, num_classes=1000):
    """A random original-layout ImageNet state dict: O(1) layer scales, random BN stats/biases."""
    widths, depths, num_vit = ARCHS[arch]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _lin(sd, 'patch_embed.0', 3, widths[0] // 2, g, conv=3)
    _bn(sd, 'patch_embed.1', widths[0] // 2, g)
    _lin(sd, 'patch_embed.3', widths[0] // 2, widths[0], g, conv=3)
    _bn(sd, 'patch_embed.4', widths[0], g)
    for s, (c, d) in enumerate(zip(widths, depths)):
        if s > 0:
            _lin(sd, f'network.{2 * s - 1}.proj', widths[s - 1], c, g, conv=3)
            _bn(sd, f'network.{2 * s - 1}.norm', c, g)
        num_4d = d - num_vit if s == 3 else d
        for b in range(d):
            is_3d = b >= num_4d
            idx = b + 1 if is_3d else b  # the flatten takes the slot after the last 4D block
            p = f'network.{2 * s}.{idx}'
            sd[f'{p}.layer_scale_1'] = torch.rand(c, generator=g) + 0.5
            sd[f'{p}.layer_scale_2'] = torch.rand(c, generator=g) + 0.5
            if is_3d:
                _bn_ln(sd, f'{p}.norm1', c, g)
                _bn_ln(sd, f'{p}.norm2', c, g)
                _lin(sd, f'{p}.token_mixer.qkv', c, HEADS * (2 * KEY_DIM + VAL_DIM), g)
                _lin(sd, f'{p}.token_mixer.proj', HEADS * VAL_DIM, c, g)
                sd[f'{p}.token_mixer.attention_biases'] = torch.randn(HEADS, 49, generator=g)
                sd[f'{p}.token_mixer.attention_bias_idxs'] = _offsets(7)
                _lin(sd, f'{p}.mlp.fc1', c, 4 * c, g)
                _lin(sd, f'{p}.mlp.fc2', 4 * c, c, g)
            else:
                _lin(sd, f'{p}.mlp.fc1', c, 4 * c, g, conv=1)
                _bn(sd, f'{p}.mlp.norm1', 4 * c, g)
                _lin(sd, f'{p}.mlp.fc2', 4 * c, c, g, conv=1)
                _bn(sd, f'{p}.mlp.norm2', c, g)
    _bn_ln(sd, 'norm', widths[-1], g)
    _lin(sd, 'head', widths[-1], num_classes, g)
    _lin(sd, 'dist_head', widths[-1], num_classes, g)
    return sd


def _bn_ln(sd, name, c, g):
    sd[f'{name}.weight'] = torch.rand(c, generator=g) + 0.5
    sd[f'{name}.bias'] = torch.randn(c, generator=g) * 0.1


def _offsets(r):
    pts = [(y, x) for y in range(r) for x in range(r)]
    return torch.tensor([[abs(a[0] - b[0]) * r + abs(a[1] - b[1]) for b in pts] for a in pts])


def imagenet_checkpoint(arch, seed=0):
    """The whole file as the original training script saved it."""
    sd = imagenet_state_dict(arch, seed)
    first = next(iter(sd.values()))
    return {'model': sd,
            'optimizer': {'state': {0: {'exp_avg': torch.zeros_like(first)}},
                          'param_groups': [{'lr': 1e-3, 'weight_decay': 0.05, 'params': [0]}]},
            'lr_scheduler': {'base_lrs': [1e-3], 'last_epoch': 299},
            'epoch': 299,
            'args': argparse.Namespace(model=f'efficientformer_{arch}', lr=1e-3, epochs=300,
                                       distillation_type='hard', input_size=224)}


def stage_features(sd, arch, x):
    """The four stage outputs (before any output norm) of the original network, at a 7x7 grid.

    4D stages on NCHW maps; the last stage flattens and runs the 3D blocks with the ImageNet bias
    ``attention_biases[:, attention_bias_idxs]`` as the original classifier does.
    """
    widths, depths, num_vit = ARCHS[arch]

    def bn(t, name):
        return F.batch_norm(t, sd[f'{name}.running_mean'], sd[f'{name}.running_var'],
                            sd[f'{name}.weight'], sd[f'{name}.bias'], False, 0., 1e-5)

    def conv(t, name, stride=1, pad=0):
        return F.conv2d(t, sd[f'{name}.weight'], sd[f'{name}.bias'], stride, pad)

    def lin(t, name):
        return F.linear(t, sd[f'{name}.weight'], sd[f'{name}.bias'])

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], 1e-5)

    x = F.relu(bn(conv(x, 'patch_embed.0', 2, 1), 'patch_embed.1'))
    x = F.relu(bn(conv(x, 'patch_embed.3', 2, 1), 'patch_embed.4'))
    feats = []
    for s, d in enumerate(depths):
        if s > 0:
            x = bn(conv(x, f'network.{2 * s - 1}.proj', 2, 1), f'network.{2 * s - 1}.norm')
        num_4d = d - num_vit if s == 3 else d
        for b in range(num_4d):
            p = f'network.{2 * s}.{b}'
            ls1 = sd[f'{p}.layer_scale_1'][:, None, None]
            ls2 = sd[f'{p}.layer_scale_2'][:, None, None]
            x = x + ls1 * (F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x)
            h = F.gelu(bn(conv(x, f'{p}.mlp.fc1'), f'{p}.mlp.norm1'))
            x = x + ls2 * bn(conv(h, f'{p}.mlp.fc2'), f'{p}.mlp.norm2')
        if s == 3 and num_vit:
            B, C, H, W = x.shape
            t = x.flatten(2).transpose(1, 2)
            for b in range(num_4d + 1, d + 1):
                p = f'network.6.{b}'
                y = ln(t, f'{p}.norm1')
                qkv = lin(y, f'{p}.token_mixer.qkv').reshape(B, H * W, HEADS, -1)
                q, k, v = qkv.split([KEY_DIM, KEY_DIM, VAL_DIM], dim=3)
                q, k, v = (z.permute(0, 2, 1, 3) for z in (q, k, v))
                bias = sd[f'{p}.token_mixer.attention_biases'][
                    :, sd[f'{p}.token_mixer.attention_bias_idxs']]
                attn = (q @ k.transpose(-2, -1) * KEY_DIM**-0.5 + bias).softmax(-1)
                y = lin((attn @ v).transpose(1, 2).reshape(B, H * W, -1), f'{p}.token_mixer.proj')
                t = t + sd[f'{p}.layer_scale_1'] * y
                y = lin(F.gelu(lin(ln(t, f'{p}.norm2'), f'{p}.mlp.fc1')), f'{p}.mlp.fc2')
                t = t + sd[f'{p}.layer_scale_2'] * y
            x = t.transpose(1, 2).reshape(B, C, H, W)
        feats.append(x)
    return feats
