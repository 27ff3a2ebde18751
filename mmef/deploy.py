"""Deploy mode: EfficientFormer rewritten with inference-time modules.

Everything deploy-specific lives here; the training modules in :mod:`mmef.models` have one
forward and no deploy flags. ``switch_to_deploy(backbone)`` replaces, in place and for inference
only, the backbone's training modules with the plain modules below:

* every conv-BatchNorm pair is folded into one conv (``mmcv.cnn.fuse_conv_bn``), and each
  ``ConvNorm`` unit becomes that conv;
* :class:`DeployedMB4D`: ``ls2`` folded into ``mlp.fc2``; ``x + ls1 * (pool(x) - x)`` runs as one
  lerp (``ls1`` multiplies ``pool(x) - x``, and the count-excluding average pool is not a
  convolution at the borders, so that scale cannot be folded exactly); without autograd the
  block works in place, reusing its buffers;
* :class:`DeployedMB3D`: ``ls1`` / ``ls2`` folded into ``attn.proj`` / ``mlp.fc2``, the LayerNorm
  affines folded into the linear layer that reads them (``attn.qkv``, ``mlp.fc1``);
* :class:`DeployedAttention`: the attention bias of each grid size computed once and cached;
  CPU inference adds the bias inside the GEMM and does the softmax in place, a block of query
  rows at a time (:func:`_attention_rows`: no (heads, N, M) logits allocated per forward);
* V2: :class:`DeployedV2Block` (``ls1`` / ``ls2`` folded into the attention's output conv and
  ``mlp.fc2``, GELU in place), :class:`DeployedAttention4D` (logit scale folded into the query
  conv, the first talking head folded with the bias into one constant per grid size, talking
  heads as matrix products over the heads, softmax in place) and
  :class:`DeployedAttention4DDownsample`;
* :class:`DeployedGroupNorm` for V1's outputs: normalises the channels_last maps as NCHW and
  exports to ONNX as a two-level reduction (see its docstring). (Both backbones' forwards return
  contiguous NCHW maps: mmcv 2.1.0's CPU RoIAlign reads raw memory and gives wrong values on
  channels_last maps.)
* the stem converts its input to channels_last and the 4D part runs there (oneDNN's 1x1 convs
  and pooling are about twice as fast as on NCHW on CPU; docs/benchmark.md);
* stochastic depth and activation checkpointing are dropped.

All folds are exact algebra; outputs equal the unfused eval model up to float rounding
(tests/test_deploy.py). ``channels_last`` and ``fused_mixer`` switch single steps off, for the
ablations of tools/benchmark.py. ``switch_to_deploy_model(model)`` does the same for every
EfficientFormer inside an mmdet detector / mmseg segmentor and, with ``fuse_others=True``, folds
the other conv-BN pairs with ``mmcv.cnn.fuse_conv_bn``. Deploy modules refuse ``train()``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm

from .models.base import EfficientFormerBase
from .registry import DEPLOYERS
from .models.attention import GridCache
from .models.efficientformer_v2 import FFN, AttnDownsample, AttnFFN, Attention4D, _heads
from .models.layers import MB3D, MB4D, ConvNorm, DropPath, LayerScale, Stem


class _InferenceOnly(nn.Module):
    """Base of the deploy modules: they hold folded weights and cannot be trained."""

    def train(self, mode=True):
        if mode:
            raise RuntimeError(f'This model was switched to deploy mode ({type(self).__name__}: BN '
                               f'and layer scales folded into weights) and cannot be trained; '
                               f'build a new model (or load an undeployed checkpoint) to train.')
        return super().train(False)


def fold_conv_norm(unit):
    """The ``Conv2d`` computing ``unit.bn(unit.conv(x))`` for a :class:`ConvNorm` in eval mode.

    Raises:
        ValueError: if the BatchNorm keeps no running statistics (nothing to fold).
    """
    bn = unit.bn
    if isinstance(bn, _BatchNorm) and (not bn.track_running_stats or bn.running_var is None
                                       or not bn.affine):
        raise ValueError(f'Cannot fold {bn}: deploy needs a BatchNorm with running statistics '
                         f'and an affine transform (track_running_stats=True, affine=True).')
    return fuse_conv_bn(nn.Sequential(unit.conv, bn))[0]


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


def _layer_scale(ls):
    return ls.gamma.detach() if isinstance(ls, LayerScale) else None


class ChannelsLast(nn.Module):
    """Returns its input in channels_last memory format (same values)."""

    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


class DeployedMB4D(_InferenceOnly):
    """MB4D with BN and ``ls2`` folded: ``x = lerp(x, pool(x), ls1)``, ``x + fc2(gelu(fc1(x)))``.

    Args:
        block (MB4D): the training block (eval mode), whose modules are reused.
        fused_mixer (bool): lerp / in-place forward; False gives the plain out-of-place
            ``x + ls1 * (pool(x) - x)`` (a benchmark ablation). Defaults to True.
    """

    def __init__(self, block, fused_mixer=True):
        super().__init__()
        self.pool = block.pool
        self.fc1, self.fc2 = block.mlp.fc1, block.mlp.fc2  # BN already folded
        self.act = _exact_gelu(block.mlp.act)

        ls1, ls2 = _layer_scale(block.ls1), _layer_scale(block.ls2)
        if ls2 is not None:
            fold_output_scale(self.fc2, ls2)
        channels = self.fc2.out_channels
        self.register_buffer('gamma', (ls1 if ls1 is not None else torch.ones(channels)).view(
            1, -1, 1, 1).clone())
        self.fused_mixer = fused_mixer

    def forward(self, x):
        gamma = self.gamma.to(x.dtype)
        if not self.fused_mixer:
            x = x + gamma * (self.pool(x) - x)
            return x + self.fc2(self.act(self.fc1(x)))
        if torch.is_grad_enabled():
            x = torch.lerp(x, self.pool(x), gamma)
            return x + self.fc2(self.act(self.fc1(x)))
        # without autograd, in-place ops reuse buffers (fresh large buffers cost page faults)
        x = self.pool(x).lerp_(x, 1 - gamma)
        return self.fc2(torch.ops.aten.gelu_(self.fc1(x))).add_(x)


def _exact_gelu(act):
    """The deployed MLPs apply GELU in place; the training modules always use exact GELU."""
    if type(act) is not nn.GELU or act.approximate != 'none':
        raise TypeError(f'deploy expects the MLP activation nn.GELU(), got {act}')
    return act


class DeployedV2Block(_InferenceOnly):
    """EfficientFormerV2 FFN / AttnFFN block with BN and layer scales folded into the convs:
    ``x + attn(x)`` (AttnFFN), then ``x + fc2(gelu(mid(gelu(fc1(x)))))``."""

    def __init__(self, block):
        super().__init__()
        attn = getattr(block, 'attn', None)
        if attn is not None:
            fold_output_scale(attn.proj, _layer_scale(block.ls1))
            attn = DeployedAttention4D(attn)
        self.attn = attn
        mlp = block.mlp
        self.fc1, self.mid, self.fc2 = mlp.fc1, mlp.mid, mlp.fc2  # BN already folded
        self.act = _exact_gelu(mlp.act)
        fold_output_scale(self.fc2, _layer_scale(block.ls2))

    def forward(self, x):
        if torch.is_grad_enabled():
            if self.attn is not None:
                x = x + self.attn(x)
            return x + self.fc2(self.act(self.mid(self.act(self.fc1(x)))))
        if self.attn is not None:
            x = self.attn(x).add_(x)
        h = torch.ops.aten.gelu_(self.mid(torch.ops.aten.gelu_(self.fc1(x))))
        return self.fc2(h).add_(x)


def _use_inplace_attention(x):
    return (x.device.type == 'cpu' and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())


CHUNK_FLOATS = 2**22


def _attention_rows(q, k, v, probabilities, chunk_floats=CHUNK_FLOATS):
    """CPU inference attention, a block of query rows at a time (softmax is per row: exact).

    ``q``, ``k``, ``v``: (B, heads, N, d), (B, heads, M, d), (B, heads, M, dv).
    ``probabilities(q_rows, k_t, r0, a, s)`` returns the (heads, rows, M) attention weights of
    the query rows ``r0:r0 + rows`` (``q_rows``: (heads, rows, d), ``k_t``: (heads, d, M)),
    computed in the two work buffers ``a`` and ``s`` of that shape. Blocks hold at most
    ``chunk_floats`` logits, so the two buffers (16 MB each by default) are reused from the heap
    and no (heads, N, M) matrix is ever allocated (one is 35 MB for 1050 tokens: above glibc's
    mmap threshold, a fresh mapping paid in page faults on every forward). Larger blocks were
    faster than smaller ones here (docs/latency.md): small ones re-read k and v per block. Returns (B, N, heads, dv): the tokens' outputs side by
    side, i.e. the NHWC memory of the (B, heads * dv, h, w) map.
    """
    b, heads, n, _ = q.shape
    m = k.shape[-2]
    rows = max(1, min(n, chunk_floats // (heads * m)))
    out = q.new_empty((b, n, heads, v.shape[-1]))
    work = [q.new_empty(heads * rows * m) for _ in range(2)]
    for i in range(b):
        k_t = k[i].transpose(1, 2)
        for r0 in range(0, n, rows):
            r = min(rows, n - r0)
            a, s = (buf[:heads * r * m].view(heads, r, m) for buf in work)
            p = probabilities(q[i, :, r0:r0 + r], k_t, r0, a, s)
            torch.bmm(p, v[i], out=out[i, r0:r0 + r].transpose(0, 1))
    return out


def _biased_softmax(bias, scale=1.0):
    """``probabilities`` of :func:`_attention_rows` for ``softmax(scale * q k^T + bias)``: the
    GEMM adds the bias rows, the softmax runs in place."""
    def probabilities(q_rows, k_t, r0, a, s):
        torch.baddbmm(bias[:, r0:r0 + q_rows.shape[1]], q_rows, k_t, alpha=scale, out=a)
        return torch.softmax(a, -1, out=a)
    return probabilities


def _gelu(act, x):
    """``act(x)`` (exact GELU), in place where ``x`` is a buffer of the inference path."""
    return torch.ops.aten.gelu_(x) if _use_inplace_attention(x) else act(x)


def _fold_query_scale(attn):
    """Moves the attention's logit scale into the query projection (exact): q' = scale * q."""
    fold_output_scale(attn.q, torch.full((attn.q.out_channels, ), attn.scale,
                                         device=attn.q.weight.device))


class DeployedAttention4D(_InferenceOnly):
    """V2's :class:`Attention4D` with the logit scale folded into the query conv, and the first
    talking head folded with the bias: ``W1 (S + B) + b1 = W1 S + C`` with the constant
    ``C = W1 B + b1`` computed once per grid size. On CPU without autograd or tracing, each
    block of query rows' logits live in two buffers (:func:`_attention_rows`), the talking heads
    run as matrix products over the heads and the softmax in place."""

    chunk_floats = CHUNK_FLOATS  # logits per block of query rows (CPU inference)

    def __init__(self, attn):
        super().__init__()
        _fold_query_scale(attn)
        self.attn = attn.eval()
        self._head_bias_cache = GridCache()

    def _head_bias(self, hw):
        w1 = self.attn.talking_head1.weight.flatten(1)
        bias = self.attn.attn_bias(hw, dtype=w1.dtype)
        mixed = torch.matmul(w1, bias.flatten(1)).view(bias.shape)  # (matmul: ONNX opset 11)
        return mixed + self.attn.talking_head1.bias.view(-1, 1, 1)

    def forward(self, x):
        a = self.attn
        size = x.shape[-2:]
        if a.stride_conv is not None:
            x = a.stride_conv(x)
        b, _, h, w = x.shape
        heads = a.num_heads
        q, k = _heads(a.q(x), heads), _heads(a.k(x), heads)
        v = a.v(x)
        v_local = a.v_local(v)
        v = _heads(v, heads)
        const = self._head_bias_cache.get_or_compute(((h, w), ), self._head_bias,
                                                     a.bias_table.device, q.dtype)
        w1 = a.talking_head1.weight.flatten(1).to(q.dtype)
        w2, b2 = a.talking_head2.weight.flatten(1).to(q.dtype), a.talking_head2.bias.to(q.dtype)
        if _use_inplace_attention(x):
            def probabilities(q_rows, k_t, r0, logits, mixed):
                rows = q_rows.shape[1]
                torch.bmm(q_rows, k_t, out=logits)
                torch.addmm(const[:, r0:r0 + rows].reshape(heads, -1), w1,
                            logits.view(heads, -1), out=mixed.view(heads, -1))
                torch.softmax(mixed, -1, out=mixed)
                torch.addmm(b2[:, None], w2, mixed.view(heads, -1), out=logits.view(heads, -1))
                return logits

            out = _attention_rows(q, k, v, probabilities, self.chunk_floats)
            out = out.view(b, h, w, -1).permute(0, 3, 1, 2).add_(v_local)  # channels_last
        else:
            logits = q @ k.transpose(-2, -1)
            shape = logits.shape
            logits = torch.matmul(w1, logits.flatten(2)).view(shape) + const
            attn = torch.matmul(w2, logits.softmax(-1).flatten(2)).view(shape) + b2.view(-1, 1, 1)
            out = (attn @ v).transpose(-2, -1).reshape(b, -1, h, w) + v_local
        if a.stride_conv is not None:
            out = F.interpolate(out, size=size, mode='bilinear', align_corners=False)
        return a.proj(_gelu(a.act, out))


class DeployedAttention4DDownsample(_InferenceOnly):
    """V2's downsampling attention with the logit scale folded into the query conv; on CPU
    without autograd or tracing it runs a block of query rows at a time
    (:func:`_attention_rows`), the bias added by the GEMM and the softmax in place."""

    chunk_floats = CHUNK_FLOATS  # logits per block of query rows (CPU inference)

    def __init__(self, attn):
        super().__init__()
        _fold_query_scale(attn)
        self.attn = attn.eval()

    def forward(self, x):
        a = self.attn
        b, _, h, w = x.shape
        q = a.q(a.q_local(x) + x[:, :, ::2, ::2])
        hq, wq = q.shape[-2:]
        q, k = _heads(q, a.num_heads), _heads(a.k(x), a.num_heads)
        v = a.v(x)
        v_local = a.v_local(v)
        v = _heads(v, a.num_heads)
        bias = a.attn_bias((hq, wq), (h, w), dtype=q.dtype)
        if _use_inplace_attention(x):
            out = _attention_rows(q, k, v, _biased_softmax(bias), self.chunk_floats)
            out = out.view(b, hq, wq, -1).permute(0, 3, 1, 2).add_(v_local)  # channels_last
        else:
            out = (q @ k.transpose(-2, -1) + bias).softmax(-1) @ v
            out = out.transpose(-2, -1).reshape(b, -1, hq, wq) + v_local
        return a.proj(_gelu(a.act, out))


class DeployedAttention(_InferenceOnly):
    """An eval-mode :class:`~mmef.models.attention.Attention` with a faster CPU inference path.

    The bias of each grid size is computed once and cached by the wrapped attention. On CPU
    without autograd, tracing or export, ``softmax(q k^T * scale + bias) v`` runs a block of
    query rows at a time (:func:`_attention_rows`), the bias added by the GEMM and the softmax
    in place. CPU
    ``scaled_dot_product_attention`` takes its slower unfused path when the value width (128)
    differs from the key width (32) (docs/benchmark.md). Elsewhere the wrapped module runs.
    """

    chunk_floats = CHUNK_FLOATS  # logits per block of query rows (CPU inference)

    def __init__(self, attn):
        super().__init__()
        self.attn = attn.eval()

    def attn_bias(self, hw):
        return self.attn.attn_bias(hw)

    def forward(self, x, hw):
        if not _use_inplace_attention(x):
            return self.attn(x, hw)
        attn = self.attn
        q, k, v = attn.project_qkv(x)
        bias = attn.attn_bias(hw, dtype=q.dtype)
        out = _attention_rows(q, k, v, _biased_softmax(bias, attn.scale), self.chunk_floats)
        return attn.proj(out.flatten(2))


class DeployedMB3D(_InferenceOnly):
    """MB3D with its layer scales and LayerNorm affines folded into the linear layers."""

    def __init__(self, block):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        ls1, ls2 = _layer_scale(block.ls1), _layer_scale(block.ls2)
        if ls1 is not None:
            fold_output_scale(attn.proj, ls1)
        if ls2 is not None:
            fold_output_scale(mlp.fc2, ls2)
        self.norm1 = fold_layer_norm_affine(block.norm1, attn.qkv)
        self.attn = DeployedAttention(attn)
        self.norm2 = fold_layer_norm_affine(block.norm2, mlp.fc1)
        self.mlp = mlp

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x))


class DeployedGroupNorm(_InferenceOnly):
    """An output GroupNorm that normalises its map as NCHW and exports precisely to ONNX.

    Exported as is, GroupNorm becomes InstanceNormalization, and onnxruntime's reductions over a
    whole large map lose precision when its mean is large next to its spread (stage 0 of L1 at
    224x320: 5e-5 relative error against a float64 reference, PyTorch 5e-7). During export it
    is written as explicit reductions over rows, then over the row results, centring before
    the variance, which keeps it near PyTorch's level.
    """

    def __init__(self, norm):
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    @staticmethod
    def _mean(x):  # (B, G, rows, cols) -> (B, G, 1, 1)
        return x.mean(-1, keepdim=True).mean(-2, keepdim=True)

    def forward(self, x):
        x = x.contiguous()
        if not torch.onnx.is_in_onnx_export():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        b, c, h, w = x.shape
        g = x.reshape(b, self.num_groups, c // self.num_groups * h, w)
        g = g - self._mean(g)
        g = g * torch.rsqrt(self._mean(g * g) + self.eps)
        x = g.reshape(b, c, h, w)
        if self.weight is not None:
            x = x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return x


_DEPLOY_MODULES = (DeployedMB4D, DeployedMB3D, DeployedAttention, DeployedGroupNorm,
                   DeployedV2Block, DeployedAttention4D, DeployedAttention4DDownsample)


def is_deployed(backbone):
    """Whether ``switch_to_deploy`` has rewritten this backbone."""
    return any(isinstance(m, _DEPLOY_MODULES) for m in backbone.modules())


@DEPLOYERS.register_module(name='switch_to_deploy')
def switch_to_deploy(backbone, input_size=None, channels_last=True, fused_mixer=True):
    """Rewrites an EfficientFormer (V1 or V2) in place for inference (see the module docstring).

    Args:
        backbone (EfficientFormer | EfficientFormerV2): The model; it is put in eval mode.
            Calling this again on a deployed model only (re)fills the bias cache.
        input_size (tuple[int, int], optional): (H, W) of the inputs to come: their attention
            bias is computed now instead of on the first forward.
        channels_last (bool): run the 4D part in channels_last. Defaults to True.
        fused_mixer (bool): lerp / in-place MB4D forward (:class:`DeployedMB4D`; V1 only).
            Defaults to True.

    Returns:
        ``backbone`` itself.
    """
    if not isinstance(backbone, EfficientFormerBase):
        raise TypeError(f'switch_to_deploy expects an EfficientFormer or EfficientFormerV2, got '
                        f'{type(backbone).__name__}; use switch_to_deploy_model for a whole '
                        'detector / segmentor')
    backbone.eval()
    if not is_deployed(backbone):
        _rewrite(backbone, channels_last, fused_mixer)
        training = (_BatchNorm, DropPath, LayerScale, ConvNorm, MB4D, MB3D, FFN, AttnFFN)
        wrapped = {id(m.attn) for m in backbone.modules()
                   if isinstance(m, (DeployedAttention4D, DeployedAttention4DDownsample))}
        assert all(id(m) in wrapped for m in backbone.modules() if isinstance(m, Attention4D))
        leftovers = [type(m).__name__ for m in backbone.modules() if isinstance(m, training)]
        if leftovers:
            raise RuntimeError(f'switch_to_deploy left training modules behind: {leftovers}')
    if input_size is not None:
        precompute_attn_bias(backbone, input_size)
    return backbone


def _fold_conv_norms(module):
    """Replaces every :class:`ConvNorm` below ``module`` by its folded conv."""
    for name, child in module.named_children():
        if isinstance(child, ConvNorm):
            setattr(module, name, fold_conv_norm(child))
        else:
            _fold_conv_norms(child)


def deploy_block(module, channels_last=True, fused_mixer=True):
    """The inference form of one part of a backbone (eval mode), as :func:`switch_to_deploy`
    writes it: a :class:`~mmef.models.layers.Stem` (as a Sequential, converting its input to
    channels_last when ``channels_last``), a ``ConvNorm`` (downsampling), an MB4D / MB3D block,
    a V2 FFN / AttnFFN block or AttnDownsample, or an output GroupNorm. Other modules are
    returned as they are. The latency tables (:mod:`mmef.latency`) time blocks in this form, so
    that what they time is what a deployed backbone runs.

    The module's own submodules are reused (folded in place); do not use it for training after.
    """
    module.eval()
    if isinstance(module, ConvNorm):
        return fold_conv_norm(module)
    if isinstance(module, nn.GroupNorm):
        return DeployedGroupNorm(module)
    _fold_conv_norms(module)
    if isinstance(module, Stem):
        return nn.Sequential(*([ChannelsLast()] if channels_last else []),
                             module.conv1, module.act, module.conv2, module.act)
    if isinstance(module, MB4D):
        return DeployedMB4D(module, fused_mixer=fused_mixer)
    if isinstance(module, (FFN, AttnFFN)):
        return DeployedV2Block(module)
    if isinstance(module, MB3D):
        return DeployedMB3D(module)
    if isinstance(module, AttnDownsample):
        module.attn = DeployedAttention4DDownsample(module.attn)
    return module


def _rewrite(backbone, channels_last, fused_mixer):
    backbone.stem = deploy_block(backbone.stem, channels_last)
    for stage in backbone.stages:
        stage.with_cp = False
        stage.downsample = deploy_block(stage.downsample)
        for i, block in enumerate(stage.blocks):
            stage.blocks[i] = deploy_block(block, fused_mixer=fused_mixer)
        for i, block in enumerate(getattr(stage, 'attn_blocks', ())):
            stage.attn_blocks[i] = deploy_block(block)
    for i in backbone.out_indices:
        name = f'norm{i}'
        if hasattr(backbone, name):
            setattr(backbone, name, deploy_block(getattr(backbone, name)))
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    backbone.eval()


def precompute_attn_bias(backbone, input_size):
    """Fills every attention's bias cache for inputs of size (H, W) (eval mode), by running one
    forward of that size on an empty batch."""
    h, w = (int(v) for v in input_size)
    param = next(backbone.parameters())
    with torch.no_grad():
        backbone(param.new_zeros((0, backbone.in_channels, h, w)))


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
    backbones = [m for m in model.modules() if isinstance(m, EfficientFormerBase)]
    if not backbones:
        raise ValueError(f'{type(model).__name__} contains no EfficientFormer to deploy')
    for backbone in backbones:
        switch_to_deploy(backbone)
    model.eval()
    if fuse_others:
        fuse_conv_bn(model)
    return model


def export_onnx(model, x, path, opset=17, dynamic=False):
    """Writes ``model`` (deploy it first) to ONNX at ``path``, traced on ``x`` with torch's
    TorchScript exporter (``dynamo=False``: the dynamo exporter needs onnxscript).

    With ``dynamic`` the batch, height and width of the input and of every output are dynamic
    axes, and the attention biases are computed in the graph from the sizes seen. Without it the
    shapes are fixed to ``x``'s and the file is rewritten with its constant subgraphs computed
    (onnxruntime's basic, hardware-independent optimisations), so the biases are constants.
    Returns PyTorch's outputs on ``x`` (a list of contiguous tensors), the reference to check
    the file against.
    """
    import os
    with torch.no_grad():
        outputs = model(x)
    outputs = [outputs] if torch.is_tensor(outputs) else list(outputs)
    names = [f'output{i}' for i in range(len(outputs))]
    axes = None
    if dynamic:
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'},
                **{n: {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'} for n in names}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (x, ), path, dynamo=False, opset_version=opset,
                          input_names=['input'], output_names=names, dynamic_axes=axes)
    if not dynamic:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = path + '.folded.tmp'
        ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        os.replace(path + '.folded.tmp', path)
    return [o.contiguous() for o in outputs]
