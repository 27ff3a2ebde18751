"""Export a deployed EfficientFormer / EfficientFormerV2 backbone (or a Semantic FPN segmentor) to
ONNX at a fixed size.

The model is switched to deploy mode first (:mod:`mmef.deploy`: BN and layer scales folded, the
attention bias of that input size baked in as a constant), exported with torch's TorchScript
exporter (``dynamo=False``; the dynamo exporter needs ``onnxscript``), then run in onnxruntime
on a random input and compared with PyTorch: max |ort - torch| / max |torch| per output must be
<= ``--rtol`` (1e-4), else the exit status is 1. Latency of both is reported (median of
``--runs``, timed alternately, same thread count).

Examples:
    python tools/export_onnx.py --arch l1 --size 800 1344 --out work_dirs/l1_800x1344.onnx
    python tools/export_onnx.py --arch v2-s2 --size 800 1344 --out work_dirs/s2_800x1344.onnx
    python tools/export_onnx.py --segmentor \\
        configs/semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py \\
        --size 512 512 --out work_dirs/fpn_l1_512.onnx
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmef.deploy import export_onnx, switch_to_deploy_model  # noqa: E402
from mmef.models import EfficientFormer, EfficientFormerV2  # noqa: E402
from mmef.models.base import EfficientFormerBase  # noqa: E402

# --arch names: V1 'l1', 'l3', 'l7'; V2 'v2-s0', 'v2-s1', 'v2-s2', 'v2-l'
ARCHS = {**{a: (EfficientFormer, a) for a in EfficientFormer.arch_settings},
         **{f'v2-{a}': (EfficientFormerV2, a) for a in EfficientFormerV2.arch_settings}}


class SegmentorLogits(nn.Module):
    """An mmseg EncoderDecoder as a tensor -> tensor module: logits at 1/4 of the input."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x):
        return self.segmentor.decode_head(self.segmentor.extract_feat(x))


def build_backbone(arch, checkpoint=None):
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint) if checkpoint else None
    cls, name = ARCHS[arch]
    model = cls(name, init_cfg=init_cfg)
    model.init_weights()
    return model.eval()


def build_segmentor(config, checkpoint=None):
    """Semantic FPN (or any mmseg EncoderDecoder with an EfficientFormer) from a config file."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    import mmseg.models  # noqa: F401
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(config)
    if checkpoint is None:  # random weights: do not look for the ImageNet file of init_cfg
        cfg.model.backbone.pop('init_cfg', None)
    cfg.model.pop('pretrained', None)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    else:
        model.init_weights()
    return SegmentorLogits(model).eval()


def export(model, x, path, opset=17, dynamic=False):
    """Deploys ``model`` (in place) and writes ONNX to ``path`` with
    :func:`mmef.deploy.export_onnx`; returns PyTorch's outputs on ``x``."""
    # deploy mode also exports the output GroupNorms precisely (mmef.deploy.DeployedGroupNorm)
    switch_to_deploy_model(model, fuse_others=not isinstance(model, EfficientFormerBase))
    return export_onnx(model, x, path, opset=opset, dynamic=dynamic)


def reference_outputs(model, x):
    """PyTorch's outputs of the (deployed) model on ``x``, as a list."""
    with torch.no_grad():
        outputs = model(x)
    return [outputs.contiguous()] if torch.is_tensor(outputs) else [o.contiguous() for o in
                                                                     outputs]


def ort_session(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def relative_errors(session, x, reference):
    """max |ort - torch| / max |torch| for every output."""
    outs = session.run(None, {'input': x.numpy()})
    if len(outs) != len(reference):
        raise RuntimeError(f'onnxruntime gave {len(outs)} outputs, PyTorch {len(reference)}')
    errors = []
    for out, ref in zip(outs, reference):
        if tuple(out.shape) != tuple(ref.shape):
            raise RuntimeError(f'output shape {out.shape} != PyTorch {tuple(ref.shape)}')
        errors.append(float((torch.from_numpy(out) - ref).abs().max() / ref.abs().max()))
    return errors


def latencies(model, session, x, runs, warmup=2):
    """Median seconds of PyTorch and onnxruntime on ``x``, timed alternately."""
    feed = {'input': x.numpy()}
    times = {'pytorch': [], 'onnxruntime': []}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for name in times:
                t0 = time.perf_counter()
                model(x) if name == 'pytorch' else session.run(None, feed)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--arch', default='l1', choices=sorted(ARCHS))
    parser.add_argument('--segmentor', metavar='CONFIG',
                        help='export this mmseg config (e.g. Semantic FPN) instead of --arch')
    parser.add_argument('--checkpoint', help='weights (backbone: any format load_pretrained '
                        'reads; segmentor: an mmseg checkpoint); default: random')
    parser.add_argument('--size', nargs=2, type=int, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch / height / width; parity is then also checked at '
                             'the transposed size and at --check-size')
    parser.add_argument('--check-size', nargs=2, type=int, metavar=('H', 'W'),
                        help='with --dynamic: another size to check (default: 3/4 of --size, '
                             'rounded to 32)')
    parser.add_argument('--rtol', type=float, default=1e-4)
    parser.add_argument('--runs', type=int, default=10, help='timed runs (0: no timing)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if min(args.size) < 1 or args.batch < 1 or args.threads < 1 or args.runs < 0:
        parser.error('--size, --batch and --threads must be positive, --runs >= 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.exit('onnxruntime is not installed: pip install onnxruntime')
    torch.set_num_threads(args.threads)
    model = (build_segmentor(args.segmentor, args.checkpoint) if args.segmentor
             else build_backbone(args.arch, args.checkpoint))
    x = torch.randn(args.batch, 3, *args.size)
    reference = export(model, x, args.out, args.opset, dynamic=args.dynamic)
    session = ort_session(args.out, args.threads)
    errors = relative_errors(session, x, reference)
    name = args.segmentor or f'EfficientFormer-{args.arch} backbone'
    print(f'{name}, deployed, input {args.batch}x3x{args.size[0]}x{args.size[1]} -> {args.out} '
          f'({os.path.getsize(args.out) / 2**20:.1f} MiB'
          f'{", dynamic batch / height / width" if args.dynamic else ""})')
    print('max relative error per output: ' + ', '.join(f'{e:.1e}' for e in errors))
    if args.dynamic:
        h, w = args.size
        other = args.check_size or [max(32, round(h * 0.75 / 32) * 32),
                                    max(32, round(w * 0.75 / 32) * 32)]
        for size in [(w, h), tuple(other)]:
            xs = torch.randn(args.batch, 3, *size)
            errs = relative_errors(session, xs, reference_outputs(model, xs))
            errors += errs
            print(f'at {size[0]}x{size[1]} (not the export size): max relative error per '
                  f'output: ' + ', '.join(f'{e:.1e}' for e in errs))
    if args.runs:
        t = latencies(model, session, x, args.runs)
        print(f'latency ({args.threads} threads, median of {args.runs}): PyTorch '
              f'{t["pytorch"] * 1e3:.1f} ms, onnxruntime {t["onnxruntime"] * 1e3:.1f} ms '
              f'(ratio ort/torch {t["onnxruntime"] / t["pytorch"]:.2f})')
    if max(errors) > args.rtol:
        print(f'FAILED: relative error {max(errors):.1e} > {args.rtol}')
        return 1
    print(f'OK: onnxruntime matches PyTorch within {args.rtol}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
