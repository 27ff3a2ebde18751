"""The architecture search space of EfficientFormer, defined once.

The latency table (which entries exist), the random architectures of the prediction study and the
slimming search all read it from here.

V1 (the EfficientFormer paper, section 4): stage widths C_j in multiples of 16, stage depths N_j,
and the number of MB3D (attention) blocks at the end of the network. mmef keeps the network
dimension-consistent: MB3D blocks are only ever the last blocks of stage 4, after the one
flatten, so an arch is ``dict(widths=4 ints, depths=4 ints, num_attn_blocks=int)`` exactly as
:class:`mmef.models.EfficientFormer` takes it.

V2 (the EfficientFormerV2 paper): widths in multiples of 8 (the released S1 and L have widths
120, 40 and 80), depths, the attention blocks at the end of stages 3 and 4, and an MLP ratio per
block, as :class:`mmef.models.EfficientFormerV2` takes them.

By default every width runs from the step to the widest of the released variants of that stage
(V1: L7's 96 / 192 / 384 / 768; V2: L's 40 / 80 / 192 / 384), and depths from 1 to the deepest
released variant's; a user narrows the widths with ``SearchSpace.with_widths``.
"""
import copy
import math
import random
from dataclasses import dataclass, field, replace

FAMILIES = ('v1', 'v2')


def _released(family):
    # local import: the model classes hold the released variants' arch tables
    from ..models import EfficientFormer, EfficientFormerV2
    cls = EfficientFormer if family == 'v1' else EfficientFormerV2
    return cls, {name: cls.parse_arch(name) for name in cls.arch_settings}


@dataclass(frozen=True)
class SearchSpace:
    """Widths, depths and block choices an arch of one family may take.

    Attributes:
        family (str): 'v1' or 'v2'.
        step (int): Widths are multiples of this.
        min_widths / max_widths (tuple[int]): Per-stage width range (inclusive).
        max_depths (tuple[int]): Per-stage depth limit; every stage has at least one block.
        mlp_ratios (tuple[int]): V2 only: the MLP ratios a block may take.
    """
    family: str
    step: int
    min_widths: tuple
    max_widths: tuple
    max_depths: tuple
    mlp_ratios: tuple = field(default=())

    @classmethod
    def default(cls, family):
        if family not in FAMILIES:
            raise ValueError(f'family must be one of {FAMILIES}, got {family!r}')
        _, released = _released(family)
        max_widths = tuple(max(a['widths'][i] for a in released.values()) for i in range(4))
        max_depths = tuple(max(a['depths'][i] for a in released.values()) for i in range(4))
        step = 16 if family == 'v1' else 8
        return cls(family, step, (step, ) * 4, max_widths, max_depths,
                   (3, 4) if family == 'v2' else ())

    def with_widths(self, min_widths=None, max_widths=None):
        """This space with other width ranges (ints apply to every stage), checked."""
        def per_stage(v, old):
            if v is None:
                return old
            return tuple(v) if isinstance(v, (list, tuple)) else (int(v), ) * 4
        lo, hi = per_stage(min_widths, self.min_widths), per_stage(max_widths, self.max_widths)
        for name, ws in (('min_widths', lo), ('max_widths', hi)):
            if len(ws) != 4 or any(not isinstance(w, int) or w < self.step or w % self.step
                                   for w in ws):
                raise ValueError(f'{name} must be 4 multiples of {self.step} (>= {self.step}) '
                                 f'for the {self.family} space, got {ws!r}')
        if any(a > b for a, b in zip(lo, hi)):
            raise ValueError(f'min_widths {lo} exceed max_widths {hi} at some stage')
        return replace(self, min_widths=lo, max_widths=hi)

    # ------------------------------------------------------------------ choices
    def widths(self, stage):
        """The widths stage ``stage`` (0..3) may take, ascending."""
        return list(range(self.min_widths[stage], self.max_widths[stage] + 1, self.step))

    def to_dict(self):
        return dict(family=self.family, step=self.step, min_widths=list(self.min_widths),
                    max_widths=list(self.max_widths), max_depths=list(self.max_depths),
                    mlp_ratios=list(self.mlp_ratios))

    @classmethod
    def from_dict(cls, d):
        return cls(d['family'], d['step'], tuple(d['min_widths']), tuple(d['max_widths']),
                   tuple(d['max_depths']), tuple(d.get('mlp_ratios', ())))

    # ------------------------------------------------------------------ archs
    def arch(self, arch):
        """A normalised copy of ``arch`` (a released name or an arch dict), checked against the
        model class; it need not lie inside this space (see :meth:`violations`)."""
        cls, released = _released(self.family)
        if isinstance(arch, str) and arch.lower() in released:
            return copy.deepcopy(released[arch.lower()])
        return cls.parse_arch(arch)

    def violations(self, arch):
        """What puts ``arch`` outside this space (empty list: inside)."""
        arch = self.arch(arch)
        out = []
        for i, (w, d) in enumerate(zip(arch['widths'], arch['depths'])):
            if w % self.step or not self.min_widths[i] <= w <= self.max_widths[i]:
                out.append(f'stage {i} width {w} is not a multiple of {self.step} in '
                           f'[{self.min_widths[i]}, {self.max_widths[i]}]')
            if not 1 <= d <= self.max_depths[i]:
                out.append(f'stage {i} depth {d} is not in [1, {self.max_depths[i]}]')
        if self.family == 'v2':
            bad = sorted({r for rs in arch['mlp_ratios'] for r in rs} - set(self.mlp_ratios))
            if bad:
                out.append(f'MLP ratios {bad} are not among {list(self.mlp_ratios)}')
        return out

    def check(self, arch):
        """Normalised ``arch``; raises ValueError naming what lies outside this space."""
        problems = self.violations(arch)
        if problems:
            raise ValueError(f'arch {arch!r} is outside the {self.family} search space: '
                             + '; '.join(problems))
        return self.arch(arch)

    def random_arch(self, rng, least=0.0):
        """A uniformly drawn arch of this space (``rng``: a ``random.Random``); with ``least``
        > 0, its widths and depths drawn from the top ``1 - least`` of each stage's range (the
        large archs that uniform draws rarely give)."""
        widths = [rng.choice(self.widths(i)[int(least * len(self.widths(i))):])
                  for i in range(4)]
        depths = [rng.randint(max(1, math.ceil(least * d)), d) for d in self.max_depths]
        if self.family == 'v1':
            arch = dict(widths=widths, depths=depths, num_attn_blocks=rng.randint(0, depths[3]))
        else:
            arch = dict(widths=widths, depths=depths,
                        num_attn_blocks=rng.randint(0, min(depths[2:])),
                        mlp_ratios=[[rng.choice(self.mlp_ratios) for _ in range(d)]
                                    for d in depths])
        return self.check(arch)

    def random_archs(self, n, seed=0, least=0.0):
        rng = random.Random(seed)
        return [self.random_arch(rng, least) for _ in range(n)]
