"""The EfficientFormer paper's four latency observations, redone at dense-prediction sizes on a
runtime of this machine.

The paper's design starts from four observations on an iPhone 12 (CoreML, 224x224, Sec. 3):
(1) patch embedding with a large kernel and stride is a speed bottleneck, a stem of 3x3
stride-2 convolutions is not; (2) a consistent feature dimension matters: reshapes between 4D
and 3D cost (LeViT), and a pool mixer in 4D is cheap next to attention; (3) Conv-BN is more
latency-favourable than LayerNorm / GroupNorm + a linear layer; (4) the latency of a
nonlinearity depends on hardware and compiler (the paper keeps GELU).

Each observation is a group of modules built to the same output shape at the map size a
backbone has at the asked input size, with random non-trivial weights, BN folded where the
deployed network folds it (:func:`mmef.deploy.deploy_block`), timed round-robin on the runtime
(:func:`mmef.latency.measure.time_round_robin`; exported runtimes checked against PyTorch
first). :func:`observe` returns the medians, the ratios to each group's reference and the
verdicts: whether the paper's claim holds here, by the rule written next to it in
:data:`OBSERVATIONS`.
"""
import statistics

import torch
import torch.nn as nn

# what counts as a difference: medians within this fraction are "the same" (a shared machine's
# noise between round-robin medians is a few per cent)
SAME = 0.05

# (key, the paper's claim, the group's reference, the rule that decides whether it holds)
OBSERVATIONS = (
    dict(key='stem', number=1,
         claim='patch embedding with a large kernel and stride is a speed bottleneck; a stem '
         'of 3x3 stride-2 convs is not',
         rule='the stem is no slower than the patch embedding of the same output (each pair)'),
    dict(key='reshape', number=2,
         claim='a consistent feature dimension matters: 4D <-> 3D reshapes around every block '
         'cost time',
         rule='the blocks with a reshape around each are slower than the same blocks in 4D'),
    dict(key='mixer', number=2,
         claim='a pool mixer in 4D is cheap next to attention (MHSA) at the same width and '
         'tokens',
         rule='the pool mixer is faster than MHSA (each map size)'),
    dict(key='norm', number=3,
         claim='Conv-BN (folded) is more latency-favourable than LayerNorm + Linear or '
         'GroupNorm + conv',
         rule='Conv-BN is no slower than either (each map size)'),
    dict(key='act', number=4,
         claim='the latency of a nonlinearity depends on hardware and compiler; GELU is '
         'affordable (the paper keeps it)',
         rule='the MLP with GELU is no slower than with ReLU'),
)


class _Tokens(nn.Module):
    """(B, C, H, W) map -> (B, H*W, C) tokens (a view where the layout allows, as in the
    network)."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class _Map(nn.Module):
    """(B, H*W, C) tokens -> (B, C, H, W) map of the given height."""

    def __init__(self, h):
        super().__init__()
        self.h = h

    def forward(self, x):
        b, n, c = x.shape
        return x.transpose(1, 2).reshape(b, c, self.h, n // self.h)


class _Pool(nn.Module):
    """The 4D pool token mixer of MB4D (``pool(x) - x``)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class _TokenMlp(nn.Module):
    """A pool mixer in 4D, then the MLP as Linear layers on tokens: a 4D -> 3D reshape and back
    around every block (what a network that is not dimension-consistent does)."""

    def __init__(self, channels, h):
        super().__init__()
        self.pool, self.tokens, self.map = _Pool(), _Tokens(), _Map(h)
        self.fc1, self.act = nn.Linear(channels, 4 * channels), nn.GELU()
        self.fc2 = nn.Linear(4 * channels, channels)

    def forward(self, x):
        x = x + self.pool(x)
        t = self.tokens(x)
        return self.map(t + self.fc2(self.act(self.fc1(t))))


class _Attention(nn.Module):
    """MB3D's attention token mixer (deployed) on a map's tokens."""

    def __init__(self, channels, hw):
        super().__init__()
        from ..deploy import DeployedAttention
        from ..models.attention import Attention
        self.attn, self.hw = DeployedAttention(Attention(channels).eval()), hw

    def forward(self, x):
        return self.attn(x, self.hw)


class _ConvMlp(nn.Module):
    """conv1x1 - activation - conv1x1 (the MLP of MB4D, BN folded)."""

    def __init__(self, channels, act):
        super().__init__()
        self.fc1, self.act = nn.Conv2d(channels, 4 * channels, 1), act
        self.fc2 = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _convs(widths, kernel=3, relu=True):
    """Stride-2 convs (3x3, padding 1) through ``widths`` with ReLU between: a conv stem."""
    layers = []
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv2d(cin, cout, kernel, 2, kernel // 2)] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*layers)


def _randomise(module, seed):
    from .blocks import _randomise as randomise
    return randomise(module.eval(), seed)


def cases(input_size, batch=1):
    """The controlled groups at ``input_size`` (H, W): {key: [(label, module, example input)]},
    the first of each group its reference. Map sizes are a backbone's: stage 1 at H/4, stage 3
    at H/16, stage 4 at H/32 (widths of L1: 48, 224, 448)."""
    from ..deploy import ChannelsLast, deploy_block
    from ..models.layers import MB4D, ConvNorm, Stem
    h, w = input_size

    def side(stride):
        return -(-h // stride), -(-w // stride)

    def image():
        return torch.randn(batch, 3, h, w)

    def fmap(c, stride, tokens=False):
        hh, ww = side(stride)
        x = torch.randn(batch, c, hh, ww)
        return x.flatten(2).transpose(1, 2).contiguous() if tokens else x

    def cl(module):  # the layout a deployed backbone gives 4D modules in PyTorch
        return nn.Sequential(ChannelsLast(), module)

    groups = {}
    groups['stem'] = [
        ('stem 3x3 s2 x2 -> 48, H/4', deploy_block(_randomise(Stem(3, 48), 0)), image()),
        ('patch embed 4x4 s4 -> 48, H/4', cl(nn.Conv2d(3, 48, 4, 4)), image()),
        ('stem 3x3 s2 x4 -> 448, H/16', cl(_convs((3, 56, 112, 224, 448))), image()),
        ('patch embed 16x16 s16 -> 448, H/16', cl(nn.Conv2d(3, 448, 16, 16)), image())]
    hh = side(16)[0]
    groups['reshape'] = [
        ('4 MB4D at H/16 (4D throughout)',
         cl(nn.Sequential(*(deploy_block(_randomise(MB4D(224), i))
                            for i in range(4)))), fmap(224, 16)),
        ('4 blocks, 4D <-> 3D around each',
         cl(nn.Sequential(*(_randomise(_TokenMlp(224, hh), i) for i in range(4)))),
         fmap(224, 16))]
    mixer = []
    for stride, c in ((32, 448), (16, 224)):
        hw = side(stride)
        mixer += [(f'pool mixer 4D, {c} at H/{stride}', cl(_Pool()), fmap(c, stride)),
                  (f'MHSA, {c} at H/{stride} ({hw[0] * hw[1]} tokens)',
                   _randomise(_Attention(c, hw), 0), fmap(c, stride, tokens=True))]
    groups['mixer'] = mixer
    norm = []
    for stride, c in ((4, 48), (16, 224)):
        norm += [
            (f'Conv-BN folded, {c}->{4 * c} at H/{stride}',
             cl(deploy_block(_randomise(ConvNorm(c, 4 * c), 0))), fmap(c, stride)),
            (f'LayerNorm + Linear, {c}->{4 * c} at H/{stride}',
             _randomise(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 4 * c)), 0),
             fmap(c, stride, tokens=True)),
            (f'GroupNorm + conv, {c}->{4 * c} at H/{stride}',
             _randomise(nn.Sequential(nn.GroupNorm(1, c), nn.Conv2d(c, 4 * c, 1)), 0),
             fmap(c, stride))]
    groups['norm'] = norm
    groups['act'] = [(f'MLP 48-192-48 at H/4, {name}', cl(_randomise(_ConvMlp(48, act), 0)),
                      fmap(48, 4))
                     for name, act in (('ReLU', nn.ReLU()), ('GELU', nn.GELU()),
                                       ('HardSwish', nn.Hardswish()), ('SiLU', nn.SiLU()))]
    return groups


def _verdict(key, ms):
    """Whether the paper's claim holds on the medians ``ms`` ({label: ms}, in case order)."""
    labels = list(ms)
    if key == 'stem':  # pairs: stem, patch embedding
        return all(ms[a] <= (1 + SAME) * ms[b] for a, b in zip(labels[::2], labels[1::2]))
    if key == 'reshape':
        return ms[labels[1]] > (1 + SAME) * ms[labels[0]]
    if key == 'mixer':  # pairs: pool, MHSA
        return all(ms[a] < ms[b] for a, b in zip(labels[::2], labels[1::2]))
    if key == 'norm':  # triples: Conv-BN, LN + Linear, GN + conv
        return all(ms[labels[i]] <= (1 + SAME) * min(ms[labels[i + 1]], ms[labels[i + 2]])
                   for i in range(0, len(labels), 3))
    if key == 'act':
        return ms[labels[1]] <= (1 + SAME) * ms[labels[0]]
    raise KeyError(key)


def observe(input_size, runtime='torch', device='cpu', threads=None, batch=1, runs=10,
            warmup=3, progress=None, busy_spread=None, only=None):
    """Times the groups of :func:`cases` on ``runtime`` (each group round-robin) and judges
    the paper's claims. Returns a dict: ``meta`` (runtime, CPU, threads, ...), and per
    observation of :data:`OBSERVATIONS` (or of ``only``, a list of keys) its claim, rule,
    ``rows`` (label, median ms, quartiles, ratio to the group's first row) and ``holds``."""
    from ..runtimes import compile_module, runtime_info
    from .measure import time_round_robin
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    groups = cases(input_size, batch)
    result = dict(kind='observe', input_size=list(input_size), batch=batch, runs=runs,
                  warmup=warmup, meta=runtime_info(runtime, device, threads), observations=[])
    for obs in OBSERVATIONS:
        if only and obs['key'] not in only:
            continue
        compiled = {}
        for label, module, x in groups[obs['key']]:
            if progress:
                progress(f'{obs["key"]}: compiling {label}')
            c = compile_module(module.eval(), x, runtime, device, threads, name=label)
            compiled[label] = (c, c.native(x))
        times = time_round_robin(compiled, runtime, device, runs, warmup, None, None,
                                 busy_spread)
        del compiled
        ms = {label: statistics.median(ts) for label, ts in times.items()}
        ref = next(iter(ms.values()))
        rows = [dict(label=label, ms=ms[label], ratio=ms[label] / ref,
                     q1_q3=statistics.quantiles(ts, n=4, method='inclusive')[::2])
                for label, ts in times.items()]
        result['observations'].append(dict(obs, rows=rows, holds=_verdict(obs['key'], ms)))
    return result
