"""EfficientFormerV2 slimmable supernet: the V2 paper's fine-grained joint search space (width,
depth, per-block MLP ratio, attention blocks) as one network with shared weights.

The supernet is an :class:`EfficientFormerV2` of the widest shape (``arch``), with the same keys,
so an EfficientFormerV2 file of that shape initialises it directly. A sub-network is an
EfficientFormerV2 arch dict (``widths``, ``depths``, ``num_attn_blocks``, ``mlp_ratios``) and is
computed with the supernet's tensors:

* width: the first ``widths[i]`` channels of every stage (multiples of 8);
* MLP ratio: a block of width ``w`` and ratio ``r`` uses the first ``int(w * r)`` hidden
  channels of its source block; ``r`` is at most the source block's ratio in ``arch``;
* depth and attention: in a stage of the supernet with ``D`` blocks, a sub-network stage with
  ``d`` blocks of which the last ``n`` are attention blocks (``n = num_attn_blocks`` in stages
  3 and 4, else 0) keeps the supernet's **first** ``d - n`` blocks as its FFN blocks and the
  supernet's **last** ``n`` blocks as its attention blocks. A supernet attention block in an
  FFN position keeps its MLP and drops its attention (the V2 blocks are an attention residual
  followed by an FFN residual), so removing an attention block turns the first one into an FFN
  block where it stands, and removing a block drops the last FFN block before the attention.

``fix(arch)`` makes the forward compute exactly that sub-network, ``extract(arch)`` returns it as
an :class:`EfficientFormerV2` with copies of the weights (:class:`~mmef.models.supernet.
SubnetSlicing`). Training follows the sandwich rule (:mod:`mmef.sandwich`).
"""
import random

from ..registry import MODELS
from .efficientformer_v2 import EfficientFormerV2
from .supernet import SubnetSlicing

WIDTH_STEP = 8
MLP_RATIOS = (3, 4)  # the V2 paper's per-block choices (mmef.latency.space agrees)


@MODELS.register_module()
class EfficientFormerV2Supernet(SubnetSlicing, EfficientFormerV2):
    """Slimmable supernet of EfficientFormerV2 for the search on dense prediction; without a
    fixed sub-network its forward is the whole (widest) network's, with the same multi-scale
    NCHW maps as :class:`EfficientFormerV2`, so any mmdet / mmseg config can train it.

    Args:
        arch (str | dict): The widest network: 's0', 's1', 's2', 'l' (default) or an
            EfficientFormerV2 arch dict; widths must be multiples of 8. Its ``mlp_ratios`` are
            the largest each block offers (ratio-4 blocks also offer 3): give a dict with all
            ratios 4 to let every block choose.
        min_widths (Sequence[int], optional): The narrowest widths the sandwich rule trains
            and slimming goes to (multiples of 8). Defaults to V2-S0's, capped at ``arch``.
        min_depths (Sequence[int]): The fewest blocks per stage trained and kept.
            Defaults to (1, 1, 2, 2).
        min_attn_blocks (int): The fewest attention blocks (stages 3 and 4). Defaults to 1.
        in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
        layer_scale_init_value, attn_bias_mode, attn_bias_resolution, with_cp, init_cfg: as
            for :class:`EfficientFormerV2`.

    The sub-networks' range (``min_*`` to ``arch``) is what :meth:`smallest_arch`,
    :meth:`random_arch` and slimming use; :meth:`fix` and :meth:`extract` take any sub-network
    of the supernet.

    Example:
        >>> import torch
        >>> from mmef.models import EfficientFormerV2Supernet
        >>> net = EfficientFormerV2Supernet('s1').eval()
        >>> net.fix(dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_attn_blocks=2,
        ...              mlp_ratios=((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4))))
        >>> [tuple(out.shape) for out in net(torch.rand(1, 3, 128, 160))]
        [(1, 32, 32, 40), (1, 48, 16, 20), (1, 96, 8, 10), (1, 176, 4, 5)]
    """

    def __init__(self,
                 arch='l',
                 min_widths=None,
                 min_depths=(1, 1, 2, 2),
                 min_attn_blocks=1,
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-5,
                 attn_bias_mode='relative',
                 attn_bias_resolution=7,
                 with_cp=False,
                 init_cfg=None):
        super().__init__(arch, in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                         layer_scale_init_value, attn_bias_mode, attn_bias_resolution, with_cp,
                         init_cfg)
        widths, depths = self.arch['widths'], self.arch['depths']
        if any(w % WIDTH_STEP for w in widths):
            raise ValueError(f'supernet widths must be multiples of {WIDTH_STEP}, got {widths}')
        if min_widths is None:
            min_widths = tuple(min(a, b) for a, b in zip(
                EfficientFormerV2.arch_settings['s0']['widths'], widths))
        self.min_widths = self._bounded('min_widths', min_widths, widths, WIDTH_STEP)
        self.min_depths = self._bounded('min_depths', min_depths, depths, 1)
        n = self.arch['num_attn_blocks']
        if not (isinstance(min_attn_blocks, int) and 0 <= min_attn_blocks <= n):
            raise ValueError(f'min_attn_blocks must be an int in [0, {n}] (the supernet has {n} '
                             f'attention blocks in stages 3 and 4), got {min_attn_blocks!r}')
        self.min_attn_blocks = min_attn_blocks
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        self.with_cp = with_cp
        # (arch, EfficientFormerV2 of its shape, subnet key -> supernet key, full-width outputs)
        self._fixed = None

    @staticmethod
    def _bounded(name, values, most, step):
        values = tuple(values)
        if (len(values) != 4 or not all(isinstance(v, int) and step <= v <= m and v % step == 0
                                        for v, m in zip(values, most))):
            raise ValueError(f'{name} must be 4 ints, multiples of {step} in [{step}, '
                             f'{list(most)}], got {values!r}')
        return values

    # --- sub-networks ----------------------------------------------------------------------

    def source_blocks(self, depths, num_attn_blocks):
        """Per stage, the supernet block each sub-network block is taken from (0-based): the
        first ``d - n`` blocks, then the last ``n`` (see the module docstring)."""
        out = []
        for i, (d, most) in enumerate(zip(depths, self.arch['depths'])):
            n = num_attn_blocks if i >= 2 else 0
            out.append(tuple(range(d - n)) + tuple(range(most - n, most)))
        return out

    def ratio_choices(self, stage, block):
        """The MLP ratios supernet block ``block`` of ``stage`` (0-based) offers: those of the
        space up to its own, or its own alone."""
        most = self.arch['mlp_ratios'][stage][block]
        return tuple(r for r in MLP_RATIOS if r <= most) or (most, )

    def check_subnet(self, arch):
        """Returns a normalised copy of a sub-network arch (an EfficientFormerV2 arch dict);
        raises ValueError saying what does not fit the supernet (stages and blocks 1-based)."""
        try:
            arch = EfficientFormerV2.parse_arch(arch)
        except ValueError as e:
            raise ValueError(f'not a sub-network arch: {e}') from None
        sup = self.arch
        for i, (w, most) in enumerate(zip(arch['widths'], sup['widths'])):
            if w % WIDTH_STEP or w > most:
                raise ValueError(f'widths[{i}] (stage {i + 1}) must be a multiple of {WIDTH_STEP} '
                                 f'up to the supernet\'s {most}, got {w}')
        for i, (d, most) in enumerate(zip(arch['depths'], sup['depths'])):
            if d > most:
                raise ValueError(f'stage {i + 1} has {d} blocks, the supernet {most}')
        n = arch['num_attn_blocks']
        if n > sup['num_attn_blocks']:
            raise ValueError(f'num_attn_blocks {n} is more than the supernet\'s '
                             f'{sup["num_attn_blocks"]}')
        sources = self.source_blocks(arch['depths'], n)
        for i, (ratios, source) in enumerate(zip(arch['mlp_ratios'], sources)):
            for k, (r, j) in enumerate(zip(ratios, source)):
                most = sup['mlp_ratios'][i][j]
                if r > most or int(arch['widths'][i] * r) < 1:
                    raise ValueError(f'block {k + 1} of stage {i + 1} (the supernet\'s block '
                                     f'{j + 1}) has MLP ratio {r}: at most {most} there')
        return arch

    def backbone_arch(self, arch):
        """The :class:`EfficientFormerV2` arch dict of a sub-network (the arch itself,
        checked and normalised)."""
        return self.check_subnet(arch)

    def subnet_keys(self, arch):
        """{EfficientFormerV2 key: supernet key} for a sub-network (the key maps of
        :meth:`extract` and :meth:`fix`; tensors are taken as their leading slices)."""
        arch = self.check_subnet(arch)
        sources = self.source_blocks(arch['depths'], arch['num_attn_blocks'])
        names, blocks = {}, {}
        for key in self.state_dict():
            parts = key.split('.', 4)
            if parts[0] == 'stages' and parts[2] == 'blocks':  # stages.i.blocks.j.rest
                blocks.setdefault((int(parts[1]), int(parts[3])), []).append((parts[4], key))
            else:
                names[key] = key  # stem, downsampling (with stage 4's attention)
        for i, source in enumerate(sources):
            d, n = arch['depths'][i], arch['num_attn_blocks'] if i >= 2 else 0
            for k, j in enumerate(source):
                ffn = k < d - n  # an FFN block: its MLP only
                for rest, key in blocks[(i, j)]:
                    if not ffn or rest.startswith(('mlp.', 'ls2.')):
                        names[f'stages.{i}.blocks.{k}.{rest}'] = key
        return names

    def _subnet_module(self, arch):
        return EfficientFormerV2(arch, in_channels=self.in_channels,
                                 out_indices=self.out_indices, frozen_stages=self.frozen_stages,
                                 norm_eval=self.norm_eval, drop_path_rate=self.drop_path_rate,
                                 layer_scale_init_value=self.layer_scale_init_value,
                                 attn_bias_mode=self.attn_bias_mode,
                                 attn_bias_resolution=self.attn_bias_resolution,
                                 with_cp=self.with_cp)

    # --- the sub-networks the sandwich rule trains -----------------------------------------

    def largest_arch(self):
        """The whole supernet as a sub-network arch."""
        return self.check_subnet(self.arch)

    def smallest_arch(self, widths=None):
        """The narrowest, shallowest sub-network of the trained range: ``min_widths`` (or
        ``widths``), ``min_depths``, ``min_attn_blocks`` and each block's smallest MLP ratio."""
        return self._arch(widths or self.min_widths, self.min_depths, self.min_attn_blocks,
                          lambda choices: choices[0])

    def random_arch(self, rng=None):
        """A sub-network drawn uniformly per choice from the trained range: each width (step
        8), the attention blocks, each depth (at least the attention blocks), each MLP ratio.
        ``rng`` is a :class:`random.Random` (the same seed gives the same arch)."""
        rng = rng or random.Random()
        sup = self.arch
        widths = [rng.randrange(lo, hi + 1, WIDTH_STEP)
                  for lo, hi in zip(self.min_widths, sup['widths'])]
        n = rng.randint(self.min_attn_blocks, sup['num_attn_blocks'])
        depths = [rng.randint(max(lo, n if i >= 2 else 1), hi)
                  for i, (lo, hi) in enumerate(zip(self.min_depths, sup['depths']))]
        return self._arch(widths, depths, n, rng.choice)

    def _arch(self, widths, depths, n, pick):
        depths = [max(d, n) if i >= 2 else d for i, d in enumerate(depths)]
        ratios = [tuple(pick(self.ratio_choices(i, j)) for j in source)
                  for i, source in enumerate(self.source_blocks(depths, n))]
        return self.check_subnet(dict(widths=tuple(widths), depths=tuple(depths),
                                      num_attn_blocks=n, mlp_ratios=tuple(ratios)))

    def forward(self, x):
        if self._fixed is not None:
            self.check_input(x)
            return self.fixed_forward(x)
        return super().forward(x)
