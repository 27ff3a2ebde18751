"""Parameters and multiply-accumulates (MACs) of the EfficientFormer backbone at any input size.

MACs are counted with forward hooks on every Conv2d and Linear plus the two attention matmuls
(q k^T and attn v) of each MB3D block; element-wise work (norms, activations, pooling, softmax,
bias adds) is not counted, as in the paper's GMACs. ``--classifier`` adds the ImageNet head the
paper counts (final LayerNorm, mean over tokens, ``head`` and ``dist_head`` Linear layers to
1000 classes), so that at 224x224 the numbers can be compared with the paper
(L1 1.30G, L3 3.74G, L7 10.16G MACs; 12.3M / 31.4M / 82.2M parameters).

Example:
    python tools/get_flops.py --arch l1 l3 l7 --size 224 224 --classifier
    python tools/get_flops.py --arch l1 --size 800 1344
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmef.models import EfficientFormer  # noqa: E402
from mmef.models.attention import Attention  # noqa: E402

PAPER = {'l1': (1.30e9, 12.3e6), 'l3': (3.74e9, 31.4e6), 'l7': (10.16e9, 82.2e6)}


class ClassifierEquivalent(nn.Module):
    """Backbone + the paper's classification head, for counting only (random weights)."""

    def __init__(self, backbone, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        channels = backbone.widths[-1]
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, num_classes)
        self.dist_head = nn.Linear(channels, num_classes)

    def forward(self, x):
        tokens = self.norm(self.backbone(x)[-1].flatten(2).transpose(1, 2)).mean(1)
        return (self.head(tokens) + self.dist_head(tokens)) / 2


def _conv_macs(module, inputs, output):
    k = module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * (module.in_channels // module.groups) * k


def _linear_macs(module, inputs, output):
    return output.numel() * module.in_features


def _attention_macs(module, inputs, output):
    batch, tokens, _ = inputs[0].shape
    return batch * module.num_heads * tokens * tokens * (module.key_dim + module.val_dim)


def count_macs(model, inputs):
    """Total MACs of one forward of ``model(inputs)``, by layer kind, as a dict of ints."""
    counts = {'conv': 0, 'linear': 0, 'attention matmul': 0}
    rules = [(nn.Conv2d, 'conv', _conv_macs), (nn.Linear, 'linear', _linear_macs),
             (Attention, 'attention matmul', _attention_macs)]
    handles = []
    for module in model.modules():
        for kind, name, rule in rules:
            if isinstance(module, kind):
                def hook(mod, inp, out, name=name, rule=rule):
                    counts[name] += int(rule(mod, inp, out))
                handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    counts['total'] = sum(counts.values())
    return counts


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def measure(arch, size, classifier=False, deploy=False):
    """Returns (params, macs dict) of the backbone (optionally with the classifier head)."""
    model = EfficientFormer(arch, out_indices=(3, ) if classifier else (0, 1, 2, 3)).eval()
    if deploy:
        model.switch_to_deploy()
    if classifier:
        model = ClassifierEquivalent(model).eval()
    return count_params(model), count_macs(model, torch.zeros(1, 3, *size))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=['l1', 'l3', 'l7'],
                        choices=sorted(EfficientFormer.arch_settings))
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
