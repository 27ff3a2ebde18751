"""Parameters and multiply-accumulates (MACs) of the EfficientFormer backbone at any input size.

MACs are counted by ``mmengine.analysis.FlopAnalyzer`` (one multiply-add = 1) on a traced forward,
with one extra handle for the attention (``aten::scaled_dot_product_attention``: q k^T and
attn v) and the norm handles switched off: like the paper's GMACs, only convolutions, linear
layers and the attention matmuls count, not element-wise work (norms, activations, pooling,
softmax, bias adds). ``--classifier`` adds the ImageNet head the paper counts (final LayerNorm,
mean over tokens, ``head`` and ``dist_head`` Linear layers to 1000 classes), so that at 224x224
the numbers can be compared with the papers (L1 1.30G, L3 3.74G, L7 10.16G MACs; 12.3M / 31.4M /
82.2M parameters; V2 S0 0.40G, S1 0.65G, S2 1.25G, L 2.56G; 3.5M / 6.1M / 12.6M / 26.1M).

Example:
    python tools/get_flops.py --arch l1 l3 l7 v2-s0 v2-s1 v2-s2 v2-l --size 224 224 --classifier
    python tools/get_flops.py --arch l1 --size 800 1344
"""
import argparse
import math
import os
import sys

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmef.deploy import switch_to_deploy  # noqa: E402
from mmef.models import EfficientFormer, EfficientFormerV2  # noqa: E402

# --arch names: V1 'l1', 'l3', 'l7'; V2 'v2-s0', 'v2-s1', 'v2-s2', 'v2-l'
ARCHS = {**{a: (EfficientFormer, a) for a in EfficientFormer.arch_settings},
         **{f'v2-{a}': (EfficientFormerV2, a) for a in EfficientFormerV2.arch_settings}}
# reported MACs and parameters with the classifier at 224 (V1 paper; V2 paper / README)
PAPER = {'l1': (1.30e9, 12.3e6), 'l3': (3.74e9, 31.4e6), 'l7': (10.16e9, 82.2e6),
         'v2-s0': (0.40e9, 3.5e6), 'v2-s1': (0.65e9, 6.1e6), 'v2-s2': (1.25e9, 12.6e6),
         'v2-l': (2.56e9, 26.1e6)}
# FlopAnalyzer operator names -> the table's columns (V1 attention is one SDPA call, V2's the
# two matmuls q k^T and attn v)
KINDS = {'conv': 'conv', 'linear': 'linear', 'scaled_dot_product_attention': 'attention matmul',
         'matmul': 'attention matmul'}
NOT_COUNTED = ('aten::batch_norm', 'aten::group_norm', 'aten::layer_norm',
               'aten::upsample_bilinear2d')


class ClassifierEquivalent(nn.Module):
    """Backbone + the paper's classification head, for counting only (random weights): a norm
    (V1 LayerNorm over tokens, V2 BatchNorm), the mean over positions, head and dist_head."""

    def __init__(self, backbone, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        channels = backbone.widths[-1]
        self.v2 = isinstance(backbone, EfficientFormerV2)
        self.norm = nn.BatchNorm2d(channels) if self.v2 else nn.LayerNorm(channels)
        self.head = nn.Linear(channels, num_classes)
        self.dist_head = nn.Linear(channels, num_classes)

    def forward(self, x):
        last = self.backbone(x)[-1]
        tokens = self.norm(last).flatten(2).mean(-1) if self.v2 else \
            self.norm(last.flatten(2).transpose(1, 2)).mean(1)
        return (self.head(tokens) + self.dist_head(tokens)) / 2


def attention_macs(inputs, outputs):
    """q (..., N, dk), k (..., M, dk), v (..., M, dv): N M dk for q k^T plus N M dv for attn v."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def not_counted(inputs, outputs):
    """Handle for the norms: FlopAnalyzer counts them by default, the paper does not (a handle
    of None would only silence the warning, the default handle would still count)."""
    return 0


def count_macs(model, inputs):
    """Total MACs of one forward of ``model(inputs)``, by layer kind, as a dict of ints."""
    analyzer = FlopAnalyzer(model.eval(), inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', attention_macs,
                           **{name: not_counted for name in NOT_COUNTED})
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_op = analyzer.by_operator()
    unknown = sorted(op for op, n in by_op.items() if n and op not in KINDS)
    if unknown:
        raise RuntimeError(f'counted operators outside the table: {unknown}')
    counts = dict.fromkeys(KINDS.values(), 0)
    for op, kind in KINDS.items():
        counts[kind] += int(by_op.get(op, 0))
    counts['total'] = sum(counts.values())
    return counts


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def measure(arch, size, classifier=False, deploy=False):
    """Returns (params, macs dict) of the backbone (optionally with the classifier head)."""
    cls, name = ARCHS[arch]
    model = cls(name, out_indices=(3, ) if classifier else (0, 1, 2, 3)).eval()
    if deploy:
        switch_to_deploy(model)
    if classifier:
        model = ClassifierEquivalent(model).eval()
    return count_params(model), count_macs(model, torch.zeros(1, 3, *size))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=['l1', 'l3', 'l7'], choices=sorted(ARCHS))
    parser.add_argument('--size', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--classifier', action='store_true',
                        help='add the ImageNet head (norm, head, dist_head; 1000 classes)')
    parser.add_argument('--deploy', action='store_true',
                        help='count the deployed model (BN folded: same MACs, fewer params)')
    args = parser.parse_args(argv)
    if min(args.size) < 1:
        parser.error(f'--size must be positive, got {args.size}')
    return args


def main(argv=None):
    args = parse_args(argv)
    what = 'backbone + classifier head' if args.classifier else 'backbone (4 outputs)'
    print(f'{what}, input 1x3x{args.size[0]}x{args.size[1]}'
          f'{", deployed" if args.deploy else ""}')
    print('| arch | params (M) | GMACs | conv | linear | attention matmul |'
          + (' paper GMACs | diff |' if args.classifier and args.size == [224, 224] else ''))
    print('|---|---|---|---|---|---|' + ('---|---|' if args.classifier
                                          and args.size == [224, 224] else ''))
    for arch in args.arch:
        params, macs = measure(arch, args.size, args.classifier, args.deploy)
        row = (f'| {arch} | {params / 1e6:.2f} | {macs["total"] / 1e9:.3f} | '
               f'{macs["conv"] / 1e9:.3f} | {macs["linear"] / 1e9:.3f} | '
               f'{macs["attention matmul"] / 1e9:.3f} |')
        if args.classifier and args.size == [224, 224]:
            paper = PAPER[arch][0]
            row += f' {paper / 1e9:.2f} | {100 * (macs["total"] / paper - 1):+.1f}% |'
        print(row)


if __name__ == '__main__':
    main()
