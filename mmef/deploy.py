"""Deploy mode: fold EfficientFormer's inference-time constants into its weights.

``switch_to_deploy(backbone)`` (also ``EfficientFormer.switch_to_deploy()``) rewrites an
:class:`~mmef.models.EfficientFormer` in place, for inference only:

* every BatchNorm is folded into the convolution before it (stem, downsampling, MB4D MLPs);
* the layer scales that multiply a linear layer's output are folded into that layer: ``ls2`` of
  MB4D into ``mlp.fc2``, ``ls1`` / ``ls2`` of MB3D into ``attn.proj`` / ``mlp.fc2``; the affine part
  of MB3D's LayerNorms is folded into the linear layer that reads it (``attn.qkv``, ``mlp.fc1``).
  ``ls1`` of MB4D multiplies ``pool(x) - x``; the count-excluding average pool is not a
  convolution at the borders, so that scale is kept (folding it would not be exact);
* stochastic depth and activation checkpointing (training-only) are removed;
* the 4D part runs channels_last (oneDNN 1x1 convs and pooling are faster there); outputs are
  returned in the usual contiguous NCHW layout;
* the attention bias of each grid size is computed once and cached (optionally up front for a
  given input size, see ``input_size``).

All folds are exact algebra; the outputs equal the unfused eval model up to float rounding
(tests/test_deploy.py checks 1e-4 relative). ``switch_to_deploy_model(model)`` does the same for
every EfficientFormer inside an mmdet detector / mmseg segmentor and, with ``fuse_others=True``,
folds the other conv-BN pairs (e.g. of mmcv ``ConvModule`` heads) with mmcv's ``fuse_conv_bn``.
A deployed backbone refuses ``train()``; build a fresh model to train.
"""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .models.efficientformer import EfficientFormer
from .models.layers import MB3D, MB4D, ConvNorm, DropPath, LayerScale


def fuse_conv_bn(conv, bn):
    """Returns a new Conv2d computing ``bn(conv(x))`` with ``bn`` in eval mode (folded in float64).

    Raises:
        ValueError: if ``bn`` keeps no running statistics (nothing to fold).
    """
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f'Cannot fold {bn}: it has no running statistics '
                         '(track_running_stats=False); deploy needs a BatchNorm with statistics.')
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        std = (bn.running_var.double() + bn.eps).sqrt()
        gamma = bn.weight.double() if bn.affine else torch.ones_like(std)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
        fused.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + beta)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused.to(conv.weight.dtype)


def fold_conv_norm(unit):
    """Folds a :class:`ConvNorm`'s BN into its conv in place (no-op once folded)."""
    if isinstance(unit.bn, nn.Identity):
        return
    unit.conv = fuse_conv_bn(unit.conv, unit.bn)
    unit.bn = nn.Identity()


def fold_output_scale(layer, scale):
    """Multiplies the outputs of a Linear / Conv2d by a per-channel ``scale`` via its weights."""
    with torch.no_grad():
        s = scale.detach().double()
        shape = (-1, ) + (1, ) * (layer.weight.dim() - 1)
        layer.weight.copy_(layer.weight.double() * s.view(shape))
        if layer.bias is not None:
            layer.bias.copy_(layer.bias.double() * s)


def fold_layer_norm_affine(norm, linear):
    """Moves ``norm``'s affine (w, b) into the following ``linear``; returns the plain LayerNorm.

    linear(x_hat * w + b) = (W diag(w)) x_hat + (W b + c), exact in real arithmetic.
    """
    if not norm.elementwise_affine:
        return norm
    if linear.bias is None:
        raise ValueError('fold_layer_norm_affine needs a Linear with a bias')
    with torch.no_grad():
        weight = linear.weight.double()
        bias = linear.bias.double()
        if norm.bias is not None:
            bias = bias + weight @ norm.bias.double()
        linear.bias.copy_(bias)
        linear.weight.copy_(weight * norm.weight.double()[None, :])
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False).to(
        linear.weight.device)


def _deploy_mb4d(block):
    fold_conv_norm(block.mlp.fc1)
    fold_conv_norm(block.mlp.fc2)
    if isinstance(block.ls2, LayerScale):
        fold_output_scale(block.mlp.fc2.conv, block.ls2.gamma)
        block.ls2 = nn.Identity()
    block.drop_path = nn.Identity()
    block.deployed = True  # lerp token mixer, in-place ops (MB4D._forward_deployed)


def _deploy_mb3d(block):
    if isinstance(block.ls1, LayerScale):
        fold_output_scale(block.attn.proj, block.ls1.gamma)
        block.ls1 = nn.Identity()
    if isinstance(block.ls2, LayerScale):
        fold_output_scale(block.mlp.fc2, block.ls2.gamma)
        block.ls2 = nn.Identity()
    block.norm1 = fold_layer_norm_affine(block.norm1, block.attn.qkv)
    block.norm2 = fold_layer_norm_affine(block.norm2, block.mlp.fc1)
    block.drop_path = nn.Identity()


def _contiguous_input(module, args):
    return tuple(a.contiguous() for a in args)


def switch_to_deploy(backbone, input_size=None):
    """Rewrites an EfficientFormer in place for inference (see the module docstring).

    Args:
        backbone (EfficientFormer): The model; it is put in eval mode. Calling this again on a
            deployed model only (re)fills the bias cache.
        input_size (tuple[int, int], optional): (H, W) of the inputs to come: their attention
            bias is computed now instead of on the first forward.

    Returns:
        EfficientFormer: ``backbone`` itself.
    """
    if not isinstance(backbone, EfficientFormer):
        raise TypeError(f'switch_to_deploy expects an EfficientFormer, got '
                        f'{type(backbone).__name__}; use switch_to_deploy_model for a whole '
                        'detector / segmentor')
    backbone.eval()
    if not getattr(backbone, 'deployed', False):
        for m in list(backbone.modules()):
            if isinstance(m, ConvNorm):
                fold_conv_norm(m)
            elif isinstance(m, MB4D):
                _deploy_mb4d(m)
            elif isinstance(m, MB3D):
                _deploy_mb3d(m)
        for stage in backbone.stages:
            stage.with_cp = False
        backbone.stem.channels_last = True
        backbone.to(memory_format=torch.channels_last)
        for i in backbone.out_indices:
            # outputs leave in NCHW: some consumers read raw memory (mmcv's CPU RoIAlign gives
            # wrong values for channels_last maps, verified with mmcv 2.1.0)
            getattr(backbone, f'norm{i}').register_forward_pre_hook(_contiguous_input)
        assert not any(isinstance(m, (_BatchNorm, DropPath)) for m in backbone.modules())
        backbone.deployed = True
    if input_size is not None:
        precompute_attn_bias(backbone, input_size)
    return backbone


def precompute_attn_bias(backbone, input_size):
    """Fills every attention's bias cache for inputs of size (H, W) (eval mode)."""
    h, w = (int(v) for v in input_size)
    for _ in range(5):  # stem (2) and three downsampling convs: k3 s2 p1, ceil(x / 2) each
        h, w = (h + 1) // 2, (w + 1) // 2
    for block in backbone.stages[-1].attn_blocks:
        block.attn.attn_bias((h, w))


def switch_to_deploy_model(model, fuse_others=False):
    """Deploys every EfficientFormer inside ``model`` (a detector, segmentor or the backbone).

    Args:
        model (nn.Module): Any module; it is put in eval mode.
        fuse_others (bool): Also fold the remaining Conv2d + BatchNorm pairs (children in that
            order, e.g. mmcv ``ConvModule`` in heads) with ``mmcv.cnn.fuse_conv_bn``.

    Returns:
        nn.Module: ``model`` itself.

    Raises:
        ValueError: if ``model`` contains no EfficientFormer.
    """
    backbones = [m for m in model.modules() if isinstance(m, EfficientFormer)]
    if not backbones:
        raise ValueError(f'{type(model).__name__} contains no EfficientFormer to deploy')
    for backbone in backbones:
        switch_to_deploy(backbone)
    model.eval()
    if fuse_others:
        from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn
        mmcv_fuse_conv_bn(model)
    return model
