"""The entries of a latency table: which timed parts a backbone is made of, and how each part is
built (deployed, at the map size its stage has) and put in the context it runs in inside a
network.

An entry is named by a short key, ``<kind><stage>:<width>`` with the input width for
downsamplings and the MLP ratio for V2 blocks, e.g. ``stem0:48``, ``down1:48>96``,
``mb4d2:224``, ``mb3d3:448``, ``norm3t:448`` (V1) or ``ffn2:96x4``, ``attn3:176x3``,
``adown3:96>176`` (V2). Kinds:

V1: ``stem`` (two stride-2 conv3x3 + ReLU, converting the image to channels_last); ``down``
(conv3x3 stride 2 into stage 1..3); ``mb4df`` / ``mb4d`` (the first MB4D of a stage / the
others); ``flatten`` (stage 4's map to tokens, before its first MB3D); ``mb3df`` / ``mb3d``;
``norm`` (an output: GroupNorm to a contiguous NCHW map) and ``normt`` (stage 4's output from
tokens: back to a map, GroupNorm).
V2: ``stem`` (GELU); ``down`` (conv3x3 stride 2 into stage 1, 2); ``adown`` (conv plus
local-global attention into stage 3); ``ffnf`` / ``ffn``; ``attnf`` / ``attn`` (AttnFFN:
stride-2 attention in stage 2 (0-based), full in stage 3); ``out`` (an output made contiguous
NCHW).

The first block of a run of equal blocks is its own entry (``...f``): it is timed after the
part that really precedes it (the stem, a downsampling, the flatten), and it runs slower than
the blocks after it, which find their buffers ready: it is the block that meets the
allocator's fresh pages (glibc returns freed large buffers to the system and the next
allocation of that size faults its pages in again) and a cache holding other data.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

KINDS = {'v1': ('stem', 'down', 'mb4df', 'mb4d', 'flatten', 'mb3df', 'mb3d', 'norm', 'normt'),
         'v2': ('stem', 'down', 'adown', 'ffnf', 'ffn', 'attnf', 'attn', 'out')}
_KEY = re.compile(r'^(?P<kind>[a-z0-9]+?)(?P<stage>\d):(?:(?P<cin>\d+)>)?(?P<width>\d+)'
                  r'(?:x(?P<ratio>\d+))?$')


@dataclass(frozen=True, order=True)
class Entry:
    """One timed part: ``kind`` at ``stage`` (0..3) with output ``width`` (and ``in_width`` for
    downsamplings, ``ratio`` for V2 blocks)."""
    stage: int
    kind: str
    width: int
    in_width: int = 0
    ratio: int = 0

    @property
    def key(self):
        cin = f'{self.in_width}>' if self.in_width else ''
        ratio = f'x{self.ratio}' if self.ratio else ''
        return f'{self.kind}{self.stage}:{cin}{self.width}{ratio}'

    @classmethod
    def parse(cls, key):
        m = _KEY.match(key)
        if not m:
            raise ValueError(f'not a latency-table entry key: {key!r}')
        return cls(int(m['stage']), m['kind'], int(m['width']), int(m['cin'] or 0),
                   int(m['ratio'] or 0))


def stage_sizes(input_size):
    """(h, w) of the maps of the four stages (strides 4..32, each stride-2 step gives ceil)."""
    h, w = input_size
    sizes = []
    for i in range(5):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if i >= 1:
            sizes.append((h, w))
    return sizes


# ---------------------------------------------------------------------------- arch -> entries
def arch_entries(family, arch, out_indices=(0, 1, 2, 3)):
    """Counter {Entry: times used} of a backbone (normalised ``arch`` dict of ``family``) with
    these outputs: the single definition of what a backbone is made of."""
    w, d, n = arch['widths'], arch['depths'], arch['num_attn_blocks']
    used = Counter({Entry(0, 'stem', w[0]): 1})
    for i in range(4):
        if i > 0:
            kind = 'adown' if family == 'v2' and i == 3 else 'down'
            used[Entry(i, kind, w[i], w[i - 1])] += 1
        if family == 'v1':
            attn = n if i == 3 else 0
            for j in range(d[i]):
                kind = 'mb3d' if j >= d[i] - attn else 'mb4d'
                first = j == 0 or j == d[i] - attn
                if kind == 'mb3d' and first:
                    used[Entry(i, 'flatten', w[i])] += 1
                used[Entry(i, kind + 'f' * first, w[i])] += 1
            if i in out_indices:
                used[Entry(i, 'normt' if attn else 'norm', w[i])] += 1
        else:
            attn = n if i >= 2 else 0
            for j, ratio in enumerate(arch['mlp_ratios'][i]):
                kind = 'attn' if j >= d[i] - attn else 'ffn'
                first = j == 0 or j == d[i] - attn
                used[Entry(i, kind + 'f' * first, w[i], ratio=int(ratio))] += 1
            if i in out_indices:
                used[Entry(i, 'out', w[i])] += 1
    return used


def space_entries(space):
    """Every entry an arch of ``space`` (a :class:`~mmef.latency.space.SearchSpace`) may use,
    in a stable order (stage, kind, widths)."""
    out = [Entry(0, 'stem', c) for c in space.widths(0)]
    for i in range(4):
        widths = space.widths(i)
        if i > 0:
            kind = 'adown' if space.family == 'v2' and i == 3 else 'down'
            out += [Entry(i, kind, c, cin) for cin in space.widths(i - 1) for c in widths]
        if space.family == 'v1':
            out += [Entry(i, k, c) for k in ('mb4df', 'mb4d', 'norm') for c in widths]
            if i == 3:
                out += [Entry(i, k, c) for k in ('flatten', 'mb3df', 'mb3d', 'normt')
                        for c in widths]
        else:
            kinds = ('ffnf', 'ffn', 'attnf', 'attn') if i >= 2 else ('ffnf', 'ffn')
            out += [Entry(i, k, c, ratio=r) for k in kinds for c in widths
                    for r in space.mlp_ratios]
            out += [Entry(i, 'out', c) for c in widths]
    return sorted(set(out))


# ---------------------------------------------------------------------------- entry -> modules
class Flatten(nn.Module):
    """Stage 4's map to (B, H*W, C) tokens, as :class:`~mmef.models.EfficientFormer` does it."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class OnGrid(nn.Module):
    """An MB3D block on tokens of a fixed (h, w) grid (single-input, for timing and export)."""

    def __init__(self, block, hw):
        super().__init__()
        self.block, self.hw = block, tuple(hw)

    def forward(self, x):
        return self.block(x, self.hw)


class Output(nn.Module):
    """A backbone output as its forward computes it: (tokens back to a map), the norm, then a
    contiguous NCHW map."""

    def __init__(self, norm=None, hw=None):
        super().__init__()
        self.norm, self.hw = norm, hw

    def forward(self, x):
        if self.hw is not None:
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.hw)
        if self.norm is not None:
            x = self.norm(x)
        return x.contiguous()


def _randomise(module, seed):
    """Random weights of realistic size (timings do not depend on the values, but activations
    must stay finite through the deepest variant, so that exported runtimes can be checked
    against PyTorch): weights N(0, 1 / fan-in), small biases, BN statistics near identity,
    layer scales U(0.1, 0.5), attention-bias tables N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('bias_table'):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
            elif name.endswith('bias'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm weights
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


def build_entry(family, entry, input_size, batch=1, seed=0):
    """(module, example input) of ``entry`` deployed at the map size of its stage for
    ``input_size``; the input is laid out as the deployed backbone hands it over
    (channels_last maps, token tensors)."""
    from ..deploy import deploy_block
    from ..models.efficientformer_v2 import AttnDownsample, AttnFFN, FFN
    from ..models.layers import MB3D, MB4D, ConvNorm, Stem

    sizes = stage_sizes(input_size)
    h, w = sizes[entry.stage]
    c, kind = entry.width, entry.kind
    if kind in ('mb4df', 'mb3df', 'ffnf', 'attnf'):
        kind = kind[:-1]  # the same block; only its context differs
    cl = torch.channels_last

    def map_input(channels, hw=(h, w)):
        return torch.randn(batch, channels, *hw).contiguous(memory_format=cl)

    if kind == 'stem':
        act = nn.ReLU if family == 'v1' else nn.GELU
        module = Stem(3, c, act_layer=act)
        example = torch.randn(batch, 3, *input_size)
    elif kind == 'down':
        module, example = ConvNorm(entry.in_width, c, 3, 2, 1), \
            map_input(entry.in_width, sizes[entry.stage - 1])
    elif kind == 'adown':
        module = AttnDownsample(entry.in_width, c)
        example = map_input(entry.in_width, sizes[entry.stage - 1])
    elif kind == 'mb4d':
        module, example = MB4D(c), map_input(c)
    elif kind == 'flatten':
        module, example = Flatten(), map_input(c)
    elif kind == 'mb3d':
        module, example = MB3D(c), torch.randn(batch, h * w, c)
    elif kind in ('norm', 'normt'):
        module = Output(nn.GroupNorm(1, c), (h, w) if kind == 'normt' else None)
        example = torch.randn(batch, h * w, c) if kind == 'normt' else map_input(c)
    elif kind == 'ffn':
        module, example = FFN(c, entry.ratio), map_input(c)
    elif kind == 'attn':
        module = AttnFFN(c, entry.ratio, stride=2 if entry.stage == 2 else 1)
        example = map_input(c)
    elif kind == 'out':
        module, example = Output(), map_input(c)
    else:
        raise ValueError(f'unknown entry kind {kind!r}')
    module = _randomise(module, seed).eval()
    if isinstance(module, MB3D):
        module = OnGrid(deploy_block(module), (h, w))
    elif isinstance(module, Output):
        if module.norm is not None:
            module.norm = deploy_block(module.norm)
    elif isinstance(module, (Stem, ConvNorm, MB4D, FFN, AttnFFN, AttnDownsample)):
        module = deploy_block(module)
    # as switch_to_deploy leaves a backbone: 4D weights in channels_last
    return module.eval().to(memory_format=cl), example


class Sink(nn.Module):
    """A map (B, C, H, W) or tokens (B, N, C) reduced to one value per channel: the end of an
    in-graph timing model (:func:`in_graph_models`), so that handing its result back to the
    caller costs next to nothing, as between two blocks inside a network."""

    def forward(self, x):
        return x.mean((2, 3)) if x.dim() == 4 else x.mean(1)


class WithOutput(nn.Module):
    """``context``, then ``entry`` on its result as an extra model output, as a backbone's
    output branches off its stage (the context's own result ends in a :class:`Sink`)."""

    def __init__(self, context, entry):
        super().__init__()
        self.context, self.entry, self.sink = context, entry, Sink()

    def forward(self, x):
        y = self.context(x)
        return self.sink(y), self.entry(y)


def in_graph_models(family, entry, input_size, batch=1):
    """(with_entry, context_only, example) for timing ``entry`` inside one compiled graph with
    its context (:func:`context_of`): ``with_entry`` runs the context and the entry,
    ``context_only`` the context alone (None for the stem), both on ``example`` and ending in a
    :class:`Sink`. The entry's time is the difference of the two models' times.

    Used for runtimes that compile a whole graph (OpenVINO): a model's input and output cross
    a boundary (a copy, and a reorder between the caller's plain layout and the plugin's
    blocked one) that blocks inside a network do not cross, about 3 ms for a 48 x 96 x 128 map
    here, more than the block itself; the difference cancels it. The stem keeps the image's
    input boundary and an output entry (``norm``, ``normt``, ``out``) its output boundary, as a
    network has them."""
    module, example = build_entry(family, entry, input_size, batch)
    context = context_of(family, entry)
    if not context:
        return nn.Sequential(module, Sink()).eval(), None, example
    parts = [build_entry(family, e, input_size, batch, seed=1)[0] for e in context]
    example = build_entry(family, context[0], input_size, batch, seed=1)[1]
    if entry.kind in ('norm', 'normt', 'out'):
        with_entry = WithOutput(nn.Sequential(*parts), module)
    else:
        with_entry = nn.Sequential(*parts, module, Sink())
    return with_entry.eval(), nn.Sequential(*parts, Sink()).eval(), example


def _half(width, step=8):
    """A representative input width for the downsampling before a stage: half, on the step."""
    return max(step, width // 2 // step * step)


def context_of(family, entry):
    """The entries that run just before ``entry`` inside a network, in order, the last handing
    it its input: their weights, activations and freed buffers are what the cache and the
    allocator hold when ``entry`` starts. Empty for the stem."""
    s, c, r = entry.stage, entry.width, entry.ratio
    kind = entry.kind
    if kind == 'stem':
        return []
    if kind in ('down', 'adown'):
        cin = entry.in_width
        return [Entry(s - 1, 'mb4d', cin) if family == 'v1' else Entry(s - 1, 'ffn', cin, ratio=4)]
    if kind in ('mb4df', 'ffnf'):
        if s == 0:
            return [Entry(0, 'stem', c)]
        return [Entry(s, 'adown' if family == 'v2' and s == 3 else 'down', c, _half(c))]
    if kind in ('mb4d', 'flatten', 'norm'):
        return [Entry(s, 'mb4d', c)]
    if kind == 'mb3df':
        return [Entry(s, 'mb4d', c), Entry(s, 'flatten', c)]
    if kind in ('mb3d', 'normt'):
        return [Entry(s, 'mb3d', c)]
    if kind == 'attnf':
        return [Entry(s, 'ffn', c, ratio=4)]
    if kind in ('ffn', 'attn'):
        return [Entry(s, kind, c, ratio=r)]
    if kind == 'out':
        return [Entry(s, 'ffn', c, ratio=4)]
    raise ValueError(f'unknown entry kind {kind!r}')
