"""Latency and peak memory of EfficientFormer backbones and whole models, next to ResNets.

Tasks:
  backbone   forward of a backbone alone (default 1x3x800x1344, the padded 1333x800 input)
  detector   Mask R-CNN inference (predict mode; default 1333x800 padded to 1344x800)
  segmentor  Semantic FPN inference (predict mode; default 512x512)
  train      one Mask R-CNN training iteration: loss, backward, AdamW step (default batch 2)
  attention  one MB3D attention (C=448) on the stride-32 grid of --size: models 'sdpa'
             (the training module: torch's scaled_dot_product_attention with the bias) and
             'inplace' (mmef.deploy.DeployedAttention's CPU inference path: bias added by the
             GEMM, softmax in place)

Latency: all models of a run live in one process and are timed round-robin (one run of each in
turn), so that load from other processes hits every row alike; after ``--warmup`` runs, the median
and the min-max spread of ``--runs`` runs are reported, with ratios to ``--ref``. On CUDA,
CUDA events time each run. Memory (``--memory``): each model is run again in a fresh subprocess
(same size, 2 runs) and the peak resident set size (VmHWM) of that process is reported,
total and above the RSS measured just before its first forward (weights and libraries excluded).

Model names (backbone task): l1 l3 l7 (mmef, unfused eval), l1-deploy l3-deploy l7-deploy
(:func:`mmef.deploy.switch_to_deploy`), l1-official (the original dense code's arithmetic:
attn_bias_mode='official', resolution 25, unfused), l1-original (that, plus the original code's
per-forward work: the bias is re-interpolated on every forward and attention runs as explicit
out-of-place matmul / softmax / matmul), r18 r50 (mmdet ResNet, eval), r50-deploy (ResNet-50 with
BN folded by mmcv and channels_last, i.e. the same treatment as l*-deploy). Ablations of the
deploy steps, chosen through switch_to_deploy's options (DEPLOY_VARIANTS): l1-fold (BN and layer
scales folded, NCHW, out-of-place MB4D), l1-fold-cl (+ channels_last); l1-deploy adds the
lerp / in-place MB4D forward.
EfficientFormerV2: v2s0 v2s1 v2s2 v2l (unfused eval), -deploy, -original (the original dense
code's arithmetic: official bias of the COCO files recomputed on every forward, unfused).
Suffixes (backbone task): NAME:bf16 (bfloat16 weights and input), NAME:autocast-bf16 (CPU bf16
autocast), NAME:ort (exported to ONNX at --size and run in onnxruntime), NAME:ov and NAME:ov-bf16
(that ONNX file in OpenVINO's CPU plugin at f32 / bf16 inference precision), NAME:ov-int8 (INT8 by
NNCF: mmef.runtimes.quantize_openvino), e.g. l1-deploy:bf16.
Whole-model tasks: l1, l1-deploy, l3, l3-deploy, ..., r50 (mmdet / mmseg R-50 configs);
NAME:autocast-bf16 (PyTorch under CPU bf16 autocast; segmentors only: mmcv's NMS takes
float32 only); NAME:ort, NAME:ov, NAME:ov-bf16,
NAME:ov-int8 (exported by mmdeploy with configs/mmdeploy/*_dynamic.py and run by mmdeploy's
backend model: graph and post-processing).

Example:
    python tools/benchmark.py backbone --threads 2 --runs 10 \\
        --models l1-official l1-original l1 l1-deploy l3 l3-deploy l7 l7-deploy r18 r50 r50-deploy
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmef.runtimes import BUSY_SPREAD  # noqa: E402

DEFAULT_SIZES = dict(backbone=(800, 1344), detector=(800, 1333), segmentor=(512, 512),
                     train=(800, 1333), attention=(800, 1344))
DEFAULT_BATCH = dict(backbone=1, detector=1, segmentor=1, train=2, attention=1)
CONFIGS = dict(
    detector={
        'l1': 'configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
        'l3': 'configs/mask_rcnn/mask-rcnn_efficientformer-l3_fpn_1x_coco.py',
        'l7': 'configs/mask_rcnn/mask-rcnn_efficientformer-l7_fpn_1x_coco.py',
        'v2s0': 'configs/mask_rcnn/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py',
        'v2s2': 'configs/mask_rcnn/mask-rcnn_efficientformerv2-s2_fpn_1x_coco.py',
        'r50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'},
    segmentor={
        'l1': 'configs/semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py',
        'l3': 'configs/semantic_fpn/fpn_efficientformer-l3_8xb4-40k_ade20k-512x512.py',
        'l7': 'configs/semantic_fpn/fpn_efficientformer-l7_8xb4-40k_ade20k-512x512.py',
        'v2s0': 'configs/semantic_fpn/fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py',
        'v2s2': 'configs/semantic_fpn/fpn_efficientformerv2-s2_8xb4-40k_ade20k-512x512.py',
        'r50': 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'})
CONFIGS['train'] = CONFIGS['detector']


# ----------------------------------------------------------------------------- backbones
class OriginalStyleAttention(torch.nn.Module):
    """An mmef Attention run the way the original dense code runs it on every forward: the
    pair-matrix bias re-interpolated (no cache), explicit matmul / softmax / matmul."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, hw):
        from mmef.models.attention import official_bias
        attn = self.attn
        q, k, v = attn.project_qkv(x)
        bias = official_bias(attn.bias_table, attn.bias_resolution, x.shape[1])
        weights = ((q @ k.transpose(-2, -1)) * attn.scale + bias).softmax(dim=-1)
        return attn.merge_heads(weights @ v)


class UncachedBias(torch.nn.Module):
    """An attention that recomputes its bias on every forward, as the original dense code does
    (mmef caches it per grid size in eval mode)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        self.attn.clear_bias_cache()
        return self.attn(x)


def build_v2(name):
    """v2s0 v2s1 v2s2 v2l (unfused eval), -deploy, -original (official bias of the COCO files,
    R = 25, recomputed every forward, unfused: the original V2 dense code's arithmetic)."""
    from mmef.deploy import switch_to_deploy
    from mmef.models import EfficientFormerV2
    from mmef.models.efficientformer_v2 import AttnDownsample, AttnFFN
    arch, _, variant = name[2:].partition('-')
    if variant == 'original':
        model = EfficientFormerV2(arch, attn_bias_mode='official', attn_bias_resolution=25)
    elif variant in ('', 'deploy'):
        model = EfficientFormerV2(arch)
    else:
        raise ValueError(f'unknown model {name!r}')
    model.init_weights()
    model.eval()
    if variant == 'deploy':
        switch_to_deploy(model)
    if variant == 'original':
        for m in list(model.modules()):
            if isinstance(m, (AttnFFN, AttnDownsample)):
                m.attn = UncachedBias(m.attn)
    return model


# deploy steps per ablation (mmef.deploy.switch_to_deploy options)
DEPLOY_VARIANTS = {'deploy': dict(), 'fold': dict(channels_last=False, fused_mixer=False),
                   'fold-cl': dict(fused_mixer=False)}


def build_backbone(name):
    from mmef.deploy import ChannelsLast, switch_to_deploy
    from mmef.models import EfficientFormer
    if name.startswith('v2'):
        return build_v2(name)
    arch, _, variant = name.partition('-')
    if arch in ('r18', 'r50'):
        import mmdet.models  # noqa: F401  (registers ResNet)
        from mmdet.registry import MODELS
        model = MODELS.build(dict(type='ResNet', depth=int(arch[1:]), out_indices=(0, 1, 2, 3),
                                  norm_eval=True, style='pytorch'))
        model.eval()  # (mmdet's ResNet.train returns None)
        if variant == 'deploy':
            from mmcv.cnn import fuse_conv_bn
            model = fuse_conv_bn(model).to(memory_format=torch.channels_last)
            model = torch.nn.Sequential(ChannelsLast(), model)
        elif variant:
            raise ValueError(f'unknown ResNet variant {name!r}')
        return model
    if variant in ('official', 'original'):
        model = EfficientFormer(arch, attn_bias_mode='official', attn_bias_resolution=25).eval()
        model.init_weights()
        if variant == 'original':
            for block in model.stages[-1].attn_blocks:
                block.attn = OriginalStyleAttention(block.attn)
        return model
    if variant and variant not in DEPLOY_VARIANTS:
        raise ValueError(f'unknown model {name!r}')
    model = EfficientFormer(arch).eval()
    model.init_weights()
    if variant:
        switch_to_deploy(model, **DEPLOY_VARIANTS[variant])
    return model


# ----------------------------------------------------------------------------- whole models
def build_whole(task, name):
    """mmdet / mmseg model from our (or the upstream R-50) config, random weights, eval."""
    from mmengine.hub import get_config
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    arch, _, variant = name.partition('-')
    if arch not in CONFIGS[task] or variant not in ('', 'deploy'):
        raise ValueError(f'unknown {task} model {name!r}; choose from {sorted(CONFIGS[task])} '
                         '(+ "-deploy" for EfficientFormer)')
    path = CONFIGS[task][arch]
    cfg = get_config(path) if '::' in path else Config.fromfile(os.path.join(ROOT, path))
    scope = 'mmseg' if task == 'segmentor' else 'mmdet'
    init_default_scope(scope)
    if scope == 'mmseg':
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    else:
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    cfg.model.backbone.pop('init_cfg', None)  # random weights: no checkpoint files needed
    cfg.model.pop('pretrained', None)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel('WARNING')  # init_weights logs every parameter
    model.init_weights()
    if variant == 'deploy':
        from mmef.deploy import switch_to_deploy_model
        switch_to_deploy_model(model, fuse_others=True)
    model.eval()
    return model


def whole_inputs(task, size, batch):
    """Batch of random images (padded to 32) and data samples; ``train`` adds ground truth."""
    h, w = size
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    inputs = torch.randn(batch, 3, ph, pw)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(ph, pw), scale_factor=(1., 1.),
                batch_input_shape=(ph, pw))
    if task == 'segmentor':
        from mmseg.structures import SegDataSample
        return inputs, [SegDataSample(metainfo=meta) for _ in range(batch)]
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    g = torch.Generator().manual_seed(0)
    for _ in range(batch):
        sample = DetDataSample(metainfo=meta)
        if task == 'train':
            n = 5
            xy = torch.rand(n, 2, generator=g) * torch.tensor([w * .6, h * .6])
            wh = 32 + torch.rand(n, 2, generator=g) * torch.tensor([w * .3, h * .3])
            boxes = torch.cat([xy, xy + wh], 1)
            masks = np.zeros((n, h, w), dtype=np.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            sample.gt_instances = InstanceData(
                bboxes=boxes, labels=torch.randint(0, 80, (n, ), generator=g),
                masks=BitmapMasks(masks, h, w))
        samples.append(sample)
    return inputs, samples


# ----------------------------------------------------------------------------- runners
# backbone name suffixes: precision / runtime of the same model
PRECISIONS = (':bf16', ':autocast-bf16', ':ort', ':ov', ':ov-bf16', ':ov-int8')
EXPORTED = dict(ort='onnxruntime', ov='openvino', **{'ov-bf16': 'openvino-bf16',
                                                   'ov-int8': 'openvino-int8'})


def backbone_runner(name, size, batch, device, fp16):
    """``NAME`` (fp32 PyTorch), ``NAME:bf16`` (bfloat16 weights and input),
    ``NAME:autocast-bf16`` (fp32 weights under CPU bf16 autocast), ``NAME:ort`` (the model
    exported to ONNX at this size, run in onnxruntime with the same thread count), ``NAME:ov``,
    ``NAME:ov-bf16`` and ``NAME:ov-int8`` (that file in OpenVINO: f32 / bf16 inference
    precision, or quantized by mmef.runtimes.quantize_openvino, calibrated on random inputs:
    the speed of INT8 does not depend on its ranges)."""
    base, _, precision = name.partition(':')
    if precision and f':{precision}' not in PRECISIONS:
        raise ValueError(f'unknown suffix {precision!r} in {name!r}; choose from {PRECISIONS}')
    model = build_backbone(base).to(device)
    x = torch.randn(batch, 3, *size, device=device)
    if fp16:
        model, x = model.half(), x.half()
    if precision == 'bf16':
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    if precision in EXPORTED:
        # exported and checked against PyTorch first (mmef.runtimes)
        from mmef.runtimes import RuntimeUnavailable, compile_module
        runtime = EXPORTED[precision]
        try:
            compiled = compile_module(model, x, runtime, device.type, name=name)
        except (RuntimeUnavailable, RuntimeError) as e:
            raise SystemExit(f'{name}: {e}')
        feed = compiled.native(x)
        return lambda: compiled.run(feed)
    autocast = precision == 'autocast-bf16'

    def run():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                    enabled=autocast):
            model(x)
    return run


def exported_whole_runner(task, name, size, batch):
    """``NAME:ort`` / ``:ov`` / ``:ov-bf16`` / ``:ov-int8`` of the detector and segmentor
    tasks: the model exported by mmdeploy with mmef's deploy config of the task
    (configs/mmdeploy/*_dynamic.py) and run by mmdeploy's backend model on the same tensors as
    the PyTorch rows: graph and post-processing (boxes, masks pasted on the image), i.e. image
    tensor in, detections out. INT8 is calibrated on random inputs (speed only)."""
    import tempfile

    import cv2
    import numpy as np
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import build_task_processor, to_backend
    from mmdeploy.utils import load_config

    import mmef.mmdeploy_compat as compat
    from mmef.runtimes import runtime_precision
    base, _, suffix = name.partition(':')
    if suffix not in EXPORTED:
        raise ValueError(f'unknown suffix {suffix!r} in {name!r}; whole models take '
                         f'{sorted(EXPORTED)}')
    backend, precision = EXPORTED[suffix].partition('-')[0], runtime_precision(EXPORTED[suffix])
    arch = base.partition('-')[0]
    work = tempfile.mkdtemp(prefix='mmef-bench-')
    ckpt = os.path.join(work, 'model.pth')
    torch.save({'state_dict': build_whole(task, arch).state_dict(), 'meta': {}}, ckpt)
    image = os.path.join(work, 'image.jpg')
    cv2.imwrite(image, (np.random.RandomState(0).rand(*size, 3) * 255).astype('uint8'))
    kind = 'segmentation' if task == 'segmentor' else 'instance-seg'
    deploy_cfg, model_cfg = load_config(
        os.path.join(ROOT, f'configs/mmdeploy/{kind}_{backend}_dynamic.py'),
        os.path.join(ROOT, CONFIGS[task][arch]))
    if backend == 'openvino':
        deploy_cfg.backend_config.precision = precision
    model_cfg.model.backbone.pop('init_cfg', None)
    with compat.quiet_registry_fallback():
        torch2onnx(image, work, 'end2end.onnx', deploy_cfg, model_cfg, ckpt, 'cpu')
    files = [os.path.join(work, 'end2end.onnx')]
    if backend == 'openvino':
        if precision == 'int8':
            h, w = size
            compat.write_calibration(compat.calibration_path(deploy_cfg, work),
                                     [np.random.RandomState(i).randn(1, 3, h, w)
                                      .astype('float32') for i in range(3)])
        files = to_backend(backend, files, work, deploy_cfg)
    processor = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    model = processor.build_backend_model(files, processor.update_data_preprocessor)
    inputs, samples = whole_inputs(task, size, batch)

    def run():
        with torch.no_grad():
            model(inputs, samples, mode='predict')
    return run


def make_runner(task, name, size, batch, device, fp16):
    """Returns a zero-argument callable doing one timed unit of work."""
    if task == 'attention':
        return attention_runner(name, size, batch, device)
    if task == 'backbone':
        return backbone_runner(name, size, batch, device, fp16)
    base, _, suffix = name.partition(':')
    bf16 = suffix == 'autocast-bf16' and task != 'train'
    if bf16 and task == 'detector':
        # measured: RuntimeError 'expected scalar type Float but found BFloat16' in mmcv's nms
        raise SystemExit(f'{name}: mmdet\'s detectors do not run under CPU bf16 autocast '
                         '(mmcv\'s NMS takes float32 only); time the backbone in '
                         'bf16 with the backbone task (NAME:bf16, NAME:autocast-bf16) or the '
                         'exported detector with NAME:ov-bf16')
    if suffix and not bf16:
        return exported_whole_runner(task, name, size, batch)
    model = build_whole(task, base).to(device)
    inputs, samples = whole_inputs(task, size, batch)
    inputs, samples = inputs.to(device), [s.to(device) for s in samples]
    if task != 'train':
        # --fp16: the device's autocast type (fp16 on GPUs); NAME:autocast-bf16: bf16 autocast
        def run():
            with torch.inference_mode(), torch.autocast(
                    device.type, torch.bfloat16 if bf16 else None, enabled=fp16 or bf16):
                model(inputs, samples, mode='predict')
        return run
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=2e-4, weight_decay=1e-4)

    def run():
        losses = model(inputs, samples, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def attention_runner(name, size, batch, device):
    """One L1-width attention (qkv, attention, projection) on the stride-32 grid of ``size``:
    'sdpa' is the training module in eval mode, 'inplace' its deploy-mode wrapper."""
    from mmef.deploy import DeployedAttention
    from mmef.models.attention import Attention
    h, w = size
    for _ in range(5):
        h, w = (h + 1) // 2, (w + 1) // 2
    attn = Attention(448).eval().to(device)
    x = torch.randn(batch, h * w, 448, device=device)
    models = {'sdpa': attn, 'inplace': DeployedAttention(attn)}
    if name not in models:
        raise ValueError(f'attention task models: {sorted(models)}; got {name!r}')
    model = models[name]

    def run():
        with torch.inference_mode():
            model(x, (h, w))
    return run


def _proc_status_mb(field):
    # VmHWM (peak RSS of this address space) rather than ru_maxrss, which Linux carries over
    # from the parent across fork + exec and so would report the benchmark parent's peak.
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f'{field} not found in /proc/self/status')


def measure_memory_child(args):
    """Runs in a fresh process: prints JSON with the RSS before the first run and the peak."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = make_runner(args.task, args.models[0], args.size, args.batch, device, args.fp16)
    before = _proc_status_mb('VmRSS')
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        run()
    peak = _proc_status_mb('VmHWM')
    out = dict(rss_before_mb=before, peak_rss_mb=peak)
    if device.type == 'cuda':
        out['cuda_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    print('MEMORY ' + json.dumps(out))


def measure_memory(args, name):
    cmd = [sys.executable, os.path.abspath(__file__), args.task, '--models', name, '--size',
           *map(str, args.size), '--batch', str(args.batch), '--threads', str(args.threads),
           '--device', args.device, '--memory-child'] + (['--fp16'] if args.fp16 else []) + \
        (['--keep-freed-memory'] if args.keep_freed_memory else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith('MEMORY '):
            return json.loads(line[len('MEMORY '):])
    raise RuntimeError(f'memory subprocess for {name} failed:\n{proc.stderr[-2000:]}')


def benchmark(args):
    """Times all models round-robin; returns {name: [seconds per run]}."""
    device = torch.device(args.device)
    runners = {name: make_runner(args.task, name, args.size, args.batch, device, args.fp16)
               for name in args.models}
    for run in runners.values():
        for _ in range(args.warmup):
            run()
    from mmef.latency.measure import time_round_robin
    # a machine busy with other processes: timed once more, then BusyMachine
    ms = time_round_robin({name: (_Runner(run), None) for name, run in runners.items()},
                          'torch', device.type, args.runs, 0, busy_spread=args.busy_spread,
                          on_retry=lambda m: print(m, file=sys.stderr, flush=True))
    return {name: [t / 1e3 for t in ts] for name, ts in ms.items()}


class _Runner:
    """A runner (no argument) as :func:`mmef.latency.measure.time_round_robin` calls it."""

    def __init__(self, run):
        self.run = lambda _: run()


def report(args, times, memory):
    ref = args.ref if args.ref in times else args.models[0]
    ref_median = statistics.median(times[ref])
    from mmef.runtimes import allocator_state, cpu_info, denormal_state
    device = torch.cuda.get_device_name() if args.device == 'cuda' else cpu_info()['model']
    print(f'\n{args.task}: batch {args.batch}, input {args.size[0]}x{args.size[1]}, '
          f'{args.device} ({device}), torch {torch.__version__}, {args.threads} threads, '
          f'{args.warmup} warm-up + {args.runs} timed runs (round-robin), '
          f'{"fp16" if args.fp16 else "fp32"}, heap: {allocator_state()}, denormals: '
          f'{denormal_state()}')
    if args.device == 'cpu' and any('bf16' in name for name in times):
        from mmef.runtimes import bf16_kernels
        fast = bf16_kernels()
        print('CPU bf16 kernels (oneDNN, AVX-512 BF16 / AMX): ' + (
            'yes' if fast else 'no: bf16 runs on slow fallback kernels on this CPU'))
    mem_head = ' | peak RSS MB | RSS above pre-run MB' if memory else ''
    print(f'| model | median ms | min-max ms | vs {ref}{mem_head} |')
    print('|---|---|---|---|' + ('---|---|' if memory else ''))
    for name, ts in times.items():
        med = statistics.median(ts)
        row = (f'| {name} | {med * 1e3:.0f} | {min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f} | '
               f'{med / ref_median:.2f}')
        if memory:
            m = memory[name]
            row += f' | {m["peak_rss_mb"]:.0f} | {m["peak_rss_mb"] - m["rss_before_mb"]:.0f}'
            if 'cuda_peak_mb' in m:
                row += f' (CUDA {m["cuda_peak_mb"]:.0f})'
        print(row + ' |')
    pairs = [('l1-deploy', 'l1-official'), ('l1-deploy', 'l1-original'), ('l3-deploy', 'r50'),
             ('l3-deploy', 'r50-deploy'), ('l1', 'r50'), ('l1-deploy', 'r18')]
    pairs += [(f'{a}-deploy', a) for a in ('l1', 'l3', 'l7')]
    pairs += [(f'{a}-deploy', f'{a}-original') for a in ('v2s0', 'v2s1', 'v2s2', 'v2l')]
    pairs += [('v2s2-deploy', 'l1-deploy'), ('v2s2-deploy', 'l3-deploy')]
    pairs += [(f'{a}{p}', a) for a in ('l1-deploy', 'l3-deploy', 'v2s0-deploy', 'v2s2-deploy')
              for p in PRECISIONS]
    lines = [f'{a} / {b} = {statistics.median(times[a]) / statistics.median(times[b]):.2f}'
             for a, b in pairs if a in times and b in times]
    if lines:
        print('ratios of medians: ' + '; '.join(lines))
        # On a shared machine the fastest run is the one least hit by other processes
        print('ratios of minima:  ' + '; '.join(
            f'{a} / {b} = {min(times[a]) / min(times[b]):.2f}'
            for a, b in pairs if a in times and b in times))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('task', choices=sorted(DEFAULT_SIZES))
    parser.add_argument('--models', nargs='+', help='model names (see above)')
    parser.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'))
    parser.add_argument('--batch', type=int)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--fp16', action='store_true', help='half precision (CUDA)')
    parser.add_argument('--ref', default='l1-official', help='row the ratios refer to')
    parser.add_argument('--memory', action='store_true',
                        help='also peak memory, one fresh subprocess per model')
    parser.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--flush-denormals', action='store_true',
                        help='flush denormal floats to zero (mmef.runtimes.flush_denormals: '
                        'PyTorch, onnxruntime and OpenVINO), as docs/latency.md tells a '
                        'deployment; random weights give attention logits whose softmax has '
                        'denormals')
    parser.add_argument('--busy-spread', type=float, default=BUSY_SPREAD,
                        help='the machine counts as busy when the runs of a model spread beyond '
                        'this ratio of quartiles (q3 / q1): timed again once, then the tool stops '
                        'with that reason; 0 checks nothing')
    parser.add_argument('--keep-freed-memory', action='store_true',
                        help='keep freed buffers in the heap (mmef.runtimes.keep_freed_memory, '
                        'process-wide; compare with a run without it, see docs/latency.md)')
    args = parser.parse_args(argv)
    args.size = tuple(args.size or DEFAULT_SIZES[args.task])
    args.batch = args.batch or DEFAULT_BATCH[args.task]
    if args.models is None and args.task == 'attention':
        args.models, args.ref = ['sdpa', 'inplace'], 'sdpa'
    if args.models is None:
        args.models = (['l1-official', 'l1-original', 'l1', 'l1-deploy', 'l3', 'l3-deploy', 'l7',
                        'l7-deploy', 'r18', 'r50', 'r50-deploy'] if args.task == 'backbone'
                       else ['l1', 'r50'] if args.task == 'train' else ['l1', 'l1-deploy', 'r50'])
    if min(args.size) < 32 or args.batch < 1 or args.runs < 1 or args.threads < 1:
        parser.error('--size must be >= 32, --batch, --runs and --threads >= 1')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    if args.fp16 and args.device != 'cuda':
        parser.error('--fp16 needs --device cuda (CPU half-precision kernels are not fast)')
    if args.task == 'train' and any(m.endswith('-deploy') for m in args.models):
        parser.error('deployed models cannot be trained')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from mmef.runtimes import keep_freed_memory
        if not keep_freed_memory():
            raise SystemExit('--keep-freed-memory needs glibc (mallopt); not found here')
    if args.flush_denormals:
        from mmef.runtimes import flush_denormals
        if not flush_denormals():
            raise SystemExit('--flush-denormals: this CPU cannot flush denormals (no SSE3)')
    if args.memory_child:
        return measure_memory_child(args)
    from mmef.runtimes import BusyMachine
    try:
        times = benchmark(args)
    except BusyMachine as e:
        raise SystemExit(f'error: {e}')
    memory = {name: measure_memory(args, name) for name in args.models} if args.memory else {}
    report(args, times, memory)


if __name__ == '__main__':
    main()
