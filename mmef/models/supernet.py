"""EfficientFormer (V1) supernet for the paper's latency-driven slimming.

Every block of the widest network is a MetaPath: a choice between an MB4D block, the identity
and, for the last ``num_attn_blocks`` blocks of stage 4, an MB3D block. In training the choices
are mixed: ``sum_n softmax((alpha_n + g_n) / tau)_n * path_n(x)``, with ``alpha`` the MetaPath's
architecture weights (its importance) and ``g_n`` standard Gumbel noise ``-log(-log(u))``. The
paper writes its noise as U(0, 1) and calls the mixing Gumbel softmax; the Gumbel noise is the
one whose arg-max is a sample of ``softmax(alpha)``, which is what makes the mixing a relaxation
of sampling one path, so it is what mmef uses (``noise='uniform'`` gives the paper's wording).
Without noise (eval mode) the weights are ``softmax(alpha / tau)``.

mmef keeps the network dimension-consistent: MB3D blocks only ever end stage 4 (one flatten, no
reshape back), where the paper lets stages 3 and 4 choose MB3D anywhere. A sub-network (an
``arch`` of this module: the four widths and each block's choice) is valid when its widths are
multiples of 16 within the supernet's, every stage keeps a block, and no MB4D follows an MB3D.

``fix(arch)`` makes the forward compute exactly that sub-network, with the first channels of
every narrowed stage (the supernet's parameters, sliced, in an :class:`EfficientFormer` of that
shape); ``extract(arch)`` returns that :class:`EfficientFormer` with copies of those weights.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..registry import MODELS
from .base import EfficientFormerBase
from .efficientformer import EfficientFormer
from .layers import MB3D, MB4D, ConvNorm, Stem

CHOICES = ('identity', 'mb4d', 'mb3d')
WIDTH_STEP = 16
NOISES = ('gumbel', 'uniform', 'none')


def leading_slice(tensor, shape):
    """The first ``shape`` entries of ``tensor`` in every dimension (a view): a sub-network's
    tensor in the supernet's (the first channels of each narrowed stage)."""
    return tensor[tuple(slice(0, n) for n in shape)]


def mixing_weights(alpha, tau, noise):
    """``softmax((alpha + eps) / tau)`` with ``eps`` standard Gumbel, U(0, 1) or 0 noise."""
    if noise == 'none':
        return torch.softmax(alpha / tau, dim=-1)
    u = torch.rand_like(alpha).clamp(1e-10, 1 - 1e-10)
    eps = -torch.log(-torch.log(u)) if noise == 'gumbel' else u
    return torch.softmax((alpha + eps) / tau, dim=-1)


class MetaPath(nn.Module):
    """One supernet block: identity, MB4D and (optionally) MB3D on an NCHW map, mixed by the
    weights of its architecture parameter ``alpha`` (in the order of ``choices``)."""

    def __init__(self, channels, with_mb3d, drop_path, layer_scale_init_value, attn_bias_mode,
                 attn_bias_resolution):
        super().__init__()
        self.choices = CHOICES if with_mb3d else CHOICES[:2]
        self.mb4d = MB4D(channels, drop_path=drop_path,
                         layer_scale_init_value=layer_scale_init_value)
        self.mb3d = MB3D(channels, drop_path=drop_path,
                         layer_scale_init_value=layer_scale_init_value,
                         attn_bias_mode=attn_bias_mode,
                         attn_bias_resolution=attn_bias_resolution) if with_mb3d else None
        self.alpha = nn.Parameter(torch.zeros(len(self.choices)))

    def forward(self, x, weights):
        out = weights[0] * x + weights[1] * self.mb4d(x)
        if self.mb3d is not None:
            b, c, h, w = x.shape
            tokens = self.mb3d(x.flatten(2).transpose(1, 2), (h, w))
            out = out + weights[2] * tokens.transpose(1, 2).reshape(b, c, h, w)
        return out


class SupernetStage(nn.Module):
    """Optional stride-2 downsampling, then MetaPaths."""

    def __init__(self, in_channels, channels, depth, num_mb3d, drop_path_rates, downsample,
                 **block_args):
        super().__init__()
        self.downsample = ConvNorm(in_channels, channels, 3, 2, 1) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            MetaPath(channels, j >= depth - num_mb3d, drop_path_rates[j], **block_args)
            for j in range(depth))


class SubnetSlicing:
    """What the supernets of both families share: a sub-network is a plain backbone of its
    shape (``_subnet_module(arch)``) computed with leading slices of the supernet's tensors,
    found through ``subnet_keys(arch)`` ({sub-network key: supernet key}); ``check_subnet``
    normalises an arch. Gives :meth:`fix`, :meth:`fixed_arch`, :meth:`extract` and
    :meth:`fixed_forward`; the supernet's ``__init__`` sets ``self._fixed = None``."""

    def _sliced(self, shapes, names):
        """The supernet's tensors for a sub-network's keys (``shapes``: {key: shape}): leading
        slices (views) of the supernet's tensors named by ``names``."""
        if set(shapes) != set(names):
            raise RuntimeError(f'internal error: sub-network keys differ from the key map '
                               f'({sorted(set(shapes) ^ set(names))[:4]})')
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        return {key: leading_slice(own[names[key]], shape) for key, shape in shapes.items()}

    def fix(self, arch, full_width_outputs=False):
        """From now on the forward computes exactly the sub-network ``arch`` (the first channels
        of each stage and hidden layer, the blocks the arch keeps) with the supernet's
        parameters; ``fix(None)`` returns to the whole supernet. Gradients and BatchNorm
        statistics go to the supernet's tensors.

        With ``full_width_outputs`` the outputs are zero-padded to the supernet's widths, so
        that a neck built for the supernet takes them: for a neck whose first layer on each
        output is linear in its channels (FPN's lateral convolutions) that equals the neck with
        its input channels cut to the sub-network's (what :func:`mmef.latency.slim.
        subnet_state_dict` keeps)."""
        if arch is None:
            self._fixed = None
            return
        arch = self.check_subnet(arch)
        # on the meta device: the forward gives it every tensor (the supernet's), so its own
        # are never allocated nor initialised
        with torch.device('meta'):
            module = self._subnet_module(arch)
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        self._fixed = (arch, module, self.subnet_keys(arch), shapes, bool(full_width_outputs))

    @property
    def fixed_arch(self):
        """The sub-network the forward computes (None: the whole supernet)."""
        return None if self._fixed is None else copy.deepcopy(self._fixed[0])

    def extract(self, arch):
        """The plain backbone of the sub-network ``arch`` (:class:`EfficientFormer` or
        :class:`EfficientFormerV2`) with copies of the supernet's weights, in this module's
        mode."""
        arch = self.check_subnet(arch)
        module = self._subnet_module(arch)
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        tensors = self._sliced(shapes, self.subnet_keys(arch))
        module.load_state_dict({k: v.detach().clone() for k, v in tensors.items()})
        return module.to(next(self.parameters()).device).train(self.training)

    @property
    def fixed_module(self):
        """The plain backbone the fixed forward runs (on the meta device: the forward gives it
        the supernet's tensors), None when nothing is fixed; e.g. to set its BatchNorm
        momentum."""
        return None if self._fixed is None else self._fixed[1]

    def fixed_forward(self, x):
        """The forward of the fixed sub-network (see :meth:`fix`)."""
        _, module, names, shapes, full_width = self._fixed
        module.train(self.training)
        for m in module.modules():
            if hasattr(m, 'clear_bias_cache'):  # the tables are the supernet's, may change
                m.clear_bias_cache()
        outs = functional_call(module, self._sliced(shapes, names), (x,))
        if full_width:
            outs = tuple(F.pad(out, (0, 0, 0, 0, 0, self.widths[i] - out.shape[1]))
                         for i, out in zip(self.out_indices, outs))
        return outs


@MODELS.register_module()
class EfficientFormerSupernet(SubnetSlicing, EfficientFormerBase):
    """Supernet of EfficientFormer (V1) for latency-driven slimming; gives the same multi-scale
    NCHW maps as :class:`EfficientFormer`, so any mmdet / mmseg config can train it.

    Args:
        arch (str | dict): The widest network: 'l1', 'l3', 'l7' (default) or a dict with keys
            ``widths``, ``depths`` and ``num_attn_blocks`` (blocks at the end of stage 4 that
            may choose MB3D), as for :class:`EfficientFormer`.
        tau (float): Gumbel-softmax temperature; a schedule sets it during training
            (:class:`mmef.hooks.SupernetTemperatureHook`). Defaults to 5.
        noise (str): 'gumbel' (default), 'uniform' (the paper's U(0, 1)) or 'none'; training
            only.
        in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
        layer_scale_init_value, attn_bias_mode, attn_bias_resolution, init_cfg: as for
            :class:`EfficientFormer`. ``init_cfg`` Pretrained loads an EfficientFormer file of
            the same widths: its MB4D blocks fill the MB4D paths of the same positions, its MB3D
            blocks the MB3D paths of the last blocks of stage 4.

    The architecture parameters are named ``*.alpha``: give them their own optimizer group
    without weight decay (``paramwise_cfg=dict(custom_keys={'.alpha': dict(decay_mult=0.)})``).

    Example:
        >>> import torch
        >>> from mmef.models import EfficientFormerSupernet
        >>> net = EfficientFormerSupernet('l1').eval()
        >>> [tuple(out.shape) for out in net(torch.rand(1, 3, 128, 160))]
        [(1, 48, 32, 40), (1, 96, 16, 20), (1, 224, 8, 10), (1, 448, 4, 5)]
        >>> arch = net.largest_arch()
        >>> arch['blocks'][3][-1]
        'mb3d'
    """

    arch_settings = EfficientFormer.arch_settings
    arch_keys = EfficientFormer.arch_keys

    def __init__(self,
                 arch='l7',
                 tau=5.,
                 noise='gumbel',
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-5,
                 attn_bias_mode='relative',
                 attn_bias_resolution=7,
                 init_cfg=None):
        super().__init__(arch, in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                         attn_bias_mode, attn_bias_resolution, init_cfg)
        if noise not in NOISES:
            raise ValueError(f'noise must be one of {NOISES}, got {noise!r}')
        if not tau > 0:
            raise ValueError(f'tau must be positive, got {tau!r}')
        bad = [w for w in self.arch['widths'] if w % WIDTH_STEP]
        if bad:
            raise ValueError(f'supernet widths must be multiples of {WIDTH_STEP}, got '
                             f'{self.arch["widths"]}')
        self.tau, self.noise = float(tau), noise
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        widths, depths = self.arch['widths'], self.arch['depths']
        self.stem = Stem(in_channels, widths[0])
        dpr = self.drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList(
            SupernetStage(widths[max(i - 1, 0)], widths[i], depths[i],
                          self.arch['num_attn_blocks'] if i == self.num_stages - 1 else 0,
                          dpr[i], downsample=i > 0,
                          layer_scale_init_value=layer_scale_init_value,
                          attn_bias_mode=attn_bias_mode,
                          attn_bias_resolution=attn_bias_resolution)
            for i in range(self.num_stages))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.GroupNorm(1, widths[i]))
        # (arch, EfficientFormer of its shape, subnet key -> supernet key, full-width outputs)
        self._fixed = None
        self._freeze_stages()

    check_arch = EfficientFormer.check_arch

    # --- architectures ---------------------------------------------------------------------

    def largest_arch(self):
        """The whole supernet as an arch: full widths, MB3D wherever it may be, else MB4D."""
        return dict(widths=tuple(self.arch['widths']),
                    blocks=tuple(tuple(block.choices[-1] for block in stage.blocks)
                                 for stage in self.stages))

    def check_subnet(self, arch):
        """Returns a normalised copy of a sub-network arch dict (``widths``: 4 ints, ``blocks``:
        per stage one choice per block); raises ValueError saying what is wrong."""
        if not isinstance(arch, dict) or set(arch) != {'widths', 'blocks'}:
            raise ValueError(f"a sub-network is a dict with keys 'widths' and 'blocks', got "
                             f'{arch!r}')
        widths, blocks = tuple(arch['widths']), tuple(tuple(s) for s in arch['blocks'])
        if len(widths) != self.num_stages or len(blocks) != self.num_stages:
            raise ValueError(f'a sub-network has {self.num_stages} widths and {self.num_stages} '
                             f'block lists, got {arch!r}')
        for i, (width, most) in enumerate(zip(widths, self.arch['widths'])):
            if not (isinstance(width, int) and WIDTH_STEP <= width <= most
                    and width % WIDTH_STEP == 0):
                raise ValueError(f'widths[{i}] (stage {i + 1}) must be a multiple of '
                                 f'{WIDTH_STEP} in [{WIDTH_STEP}, {most}], got {width!r}')
        for i, (choices, stage) in enumerate(zip(blocks, self.stages)):
            if len(choices) != len(stage.blocks):
                raise ValueError(f'stage {i + 1} has {len(stage.blocks)} blocks, the arch gives '
                                 f'{len(choices)} choices')
            for j, (choice, block) in enumerate(zip(choices, stage.blocks)):
                if choice not in block.choices:
                    raise ValueError(f'block {j + 1} of stage {i + 1} chooses from '
                                     f'{block.choices}, got {choice!r}')
            kept = [c for c in choices if c != 'identity']
            if not kept:
                raise ValueError(f'stage {i + 1} must keep at least one block')
            if 'mb3d' in kept and 'mb4d' in kept[kept.index('mb3d'):]:
                raise ValueError(f'stage {i + 1}: an MB4D block follows an MB3D block (MB3D blocks '
                                 f'only end the network)')
        return dict(widths=widths, blocks=blocks)

    def backbone_arch(self, arch):
        """The :class:`EfficientFormer` arch dict of a sub-network."""
        arch = self.check_subnet(arch)
        return dict(widths=arch['widths'],
                    depths=tuple(sum(c != 'identity' for c in s) for s in arch['blocks']),
                    num_attn_blocks=sum(c == 'mb3d' for c in arch['blocks'][-1]))

    def subnet_keys(self, arch):
        """{EfficientFormer key: supernet key} for a sub-network (the key maps of
        :meth:`extract` and :meth:`fix`; tensors are taken as their leading slices)."""
        arch = self.check_subnet(arch)
        keys = list(self.state_dict())
        names = {k: k for k in keys if k.startswith(('stem', 'norm'))}
        for i, choices in enumerate(arch['blocks']):
            names.update({k: k for k in keys if k.startswith(f'stages.{i}.downsample.')})
            num_4d = num_3d = 0
            for j, choice in enumerate(choices):
                if choice == 'identity':
                    continue
                if choice == 'mb4d':
                    target, num_4d = f'stages.{i}.blocks.{num_4d}.', num_4d + 1
                else:
                    target, num_3d = f'stages.{i}.attn_blocks.{num_3d}.', num_3d + 1
                source = f'stages.{i}.blocks.{j}.{choice}.'
                names.update({target + k[len(source):]: k for k in keys
                              if k.startswith(source)})
        return names

    def _subnet_module(self, arch):
        return EfficientFormer(self.backbone_arch(arch), in_channels=self.in_channels,
                               out_indices=self.out_indices, frozen_stages=self.frozen_stages,
                               norm_eval=self.norm_eval,
                               drop_path_rate=self.drop_path_rate,
                               layer_scale_init_value=self.layer_scale_init_value,
                               attn_bias_mode=self.attn_bias_mode,
                               attn_bias_resolution=self.attn_bias_resolution)

    # --- architecture weights --------------------------------------------------------------

    def meta_paths(self):
        """(stage, block index, MetaPath) of every block."""
        return [(i, j, block) for i, stage in enumerate(self.stages)
                for j, block in enumerate(stage.blocks)]

    def importance(self):
        """Importance of each MetaPath (per stage, a list): its non-identity paths' ``alpha``
        over the identity's, as the paper defines it ((alpha_4D [+ alpha_3D]) / alpha_I). The
        paper leaves the sign of alpha open; mmef reads the alphas through exp (the softmax's
        own scale), so the ratio is positive: sum(exp(alpha_path)) / exp(alpha_I)."""
        return [[float(block.alpha[1:].exp().sum() / block.alpha[0].exp())
                 for block in stage.blocks] for stage in self.stages]

    def forward(self, x):
        self.check_input(x)
        if self._fixed is not None:
            return self.fixed_forward(x)
        noise = self.noise if self.training else 'none'
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.downsample(x)
            for block in stage.blocks:
                x = block(x, mixing_weights(block.alpha, self.tau, noise))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)

    def map_backbone_keys(self, state_dict):
        """An :class:`EfficientFormer` state dict (mmef names) in this supernet's names: MB4D
        blocks to the MB4D paths of the same positions, the MB3D blocks (``attn_blocks``) to the
        MB3D paths of the last blocks of stage 4. What ``init_cfg`` Pretrained uses."""
        last = self.num_stages - 1
        attn = {int(k.split('.')[3]) for k in state_dict
                if k.startswith(f'stages.{last}.attn_blocks.')}
        offset = len(self.stages[last].blocks) - len(attn)
        mapped = {}
        for key, value in state_dict.items():
            parts = key.split('.')
            if key.startswith('stages.') and parts[2] == 'blocks':
                key = '.'.join(parts[:4] + ['mb4d'] + parts[4:])
            elif key.startswith('stages.') and parts[2] == 'attn_blocks':
                key = '.'.join(parts[:2] + ['blocks', str(offset + int(parts[3])), 'mb3d']
                               + parts[4:])
            mapped[key] = value
        return mapped

