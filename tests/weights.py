"""Non-trivial random weights for numerical tests.

Layer scales near their 1e-5 init, BN at its identity statistics and zero attention tables hide
almost every bug, so every numerical comparison starts from this.
"""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomize(model, seed=0):
    """Random BN statistics / affines, LayerNorm / GroupNorm affines, O(1) layer scales and
    random attention-bias tables (in place); returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.3, 2.0, generator=g)
            if isinstance(m, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.uniform_(0.5, 1.5, generator=g)
            elif name.endswith('bias_table'):
                p.normal_(0, 1, generator=g)
    return model


def shrink_bn_variances(model, seed=0):
    """BatchNorm running variances of 1e-3..1e-2 with the BN weights scaled by sqrt(var), so
    activations stay bounded (in place; returns the model). There BN's eps = 1e-5 shifts each
    normalisation by up to 0.5 %: a BN fold that leaves eps out fails a 1e-5 comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_var.uniform_(1e-3, 1e-2, generator=g)
                m.weight.mul_(m.running_var.sqrt())
    return model
