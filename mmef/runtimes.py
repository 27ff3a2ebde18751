"""Runtimes: one home for running and timing an inference module (a deployed backbone, or one
block of it) in PyTorch, onnxruntime or OpenVINO, on CPU or CUDA.

Used by ``tools/benchmark.py`` (whole models) and :mod:`mmef.latency` (blocks and whole
backbones). A runtime takes a module and an example input and gives a :class:`Compiled` that
runs the module in that runtime on inputs of the example's shape:

* ``torch``: the module itself, fp32, under ``torch.inference_mode`` (CPU or CUDA);
* ``torch-bf16``: bfloat16 weights and inputs; refused on a CPU without bf16 kernels, where
  oneDNN falls back to slow reference kernels and the timings would mislead;
* ``onnxruntime``: the module exported to ONNX at the example's shape
  (:func:`mmef.deploy.export_onnx`, constants folded), run by onnxruntime's CPU provider;
* ``openvino``: that ONNX file compiled by OpenVINO's CPU plugin at f32 inference precision
  (``openvino-bf16``: bf16, refused on a CPU without bf16 kernels; ``openvino-int8``: quantized
  by :func:`quantize_openvino`, convolutions and matrix products in INT8, calibrated on the
  example and a few random inputs of its shape, which is all a timing needs).

The OpenVINO functions here (:func:`openvino_model`, :func:`quantize_openvino`,
:func:`compile_openvino`) are also what mmdeploy's OpenVINO backend runs in mmef
(:mod:`mmef.mmdeploy_compat`): one home for OpenVINO in mmef.

Exported runtimes are checked against PyTorch on the example before anything is timed
(:data:`RUNTIME_TOL`); a wrong export is an error, never a timing.
"""
import logging
import os
import platform
import re
import statistics
import tempfile
import time

import torch

RUNTIMES = ('torch', 'torch-bf16', 'onnxruntime', 'openvino', 'openvino-bf16', 'openvino-int8')
OPENVINO_PRECISIONS = ('f32', 'bf16', 'int8')
OPENVINO_INSTALL = 'bash scripts/setup.sh (or: pip install openvino==2026.4.1 nncf==3.4.0)'

# An exported runtime's outputs must be within this much of PyTorch's (of each output's largest
# magnitude). Wrong exports (a wrong attention scale or bias) are off by 1e-2 and more; what fp32
# runtimes lose in reductions over a whole large map stays below 2e-3 (at 800x1344, stage 1 of
# L1: the unfused GroupNorm as onnxruntime's InstanceNormalization 1.1e-3, OpenVINO 1.4e-3; the
# deployed model in onnxruntime 6e-7).
# INT8 (per-tensor activations) is checked against its own bound: a wrong export is off by O(1).
RUNTIME_TOL = {'f32': 5e-3, 'bf16': 5e-2, 'int8': 0.25}


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run here; the message says why and what to do."""


def bf16_kernels():
    """Whether this CPU has bf16 kernels (oneDNN with AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_info():
    """CPU model name and the SIMD flags that decide speed (from /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name' and name in ('', platform.machine(),
                                                          platform.processor()):
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = sorted(v for v in value.split()
                                   if v.startswith(('avx', 'amx', 'fma', 'f16c')))
                    break
    except OSError:
        pass
    return dict(model=name, flags=flags, logical_cores=os.cpu_count())


def check_available(runtime, device='cpu'):
    """Raises :class:`RuntimeUnavailable` (or ValueError for an unknown name) with the reason
    when ``runtime`` cannot run on ``device`` here."""
    if runtime not in RUNTIMES:
        raise ValueError(f'unknown runtime {runtime!r}; choose from {RUNTIMES}')
    if device not in ('cpu', 'cuda'):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeUnavailable('--device cuda: torch sees no CUDA device here')
        if not runtime.startswith('torch'):
            raise RuntimeUnavailable(f'{runtime} runs on the CPU here; on CUDA use the torch or '
                                     'torch-bf16 runtime')
    if runtime == 'torch-bf16' and device == 'cpu' and not bf16_kernels():
        raise RuntimeUnavailable(
            'torch-bf16: this CPU has no bf16 kernels (oneDNN needs AVX-512 BF16 or AMX; '
            f'/proc/cpuinfo flags here: {" ".join(cpu_info()["flags"]) or "none"}), so bf16 '
            'would run on slow fallback kernels and its timings would mislead. Use the torch '
            'runtime (fp32) on this machine.')
    if runtime == 'onnxruntime':
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RuntimeUnavailable('the onnxruntime runtime needs onnxruntime: '
                                     'pip install onnxruntime')
    if runtime.startswith('openvino'):
        check_openvino(runtime_precision(runtime))


def runtime_precision(runtime):
    """'f32', 'bf16' or 'int8': the precision a runtime name of :data:`RUNTIMES` asks for."""
    return runtime.partition('-')[2] or 'f32'


def import_openvino():
    """The ``openvino`` module, or :class:`RuntimeUnavailable` with the install command."""
    try:
        import openvino
    except ImportError as e:
        raise RuntimeUnavailable(f'OpenVINO is not importable ({e}); install it: '
                                 f'{OPENVINO_INSTALL}')
    return openvino


def check_openvino(precision):
    """Raises :class:`RuntimeUnavailable` when OpenVINO cannot run at ``precision`` ('f32',
    'bf16', 'int8') on this CPU: not installed, NNCF missing for int8, or no bf16 kernels for
    bf16 (OpenVINO would silently run f32 and every bf16 figure would be an f32 one)."""
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f'OpenVINO precision {precision!r}; choose from {OPENVINO_PRECISIONS}')
    ov = import_openvino()
    if precision == 'int8':
        try:
            import nncf  # noqa: F401
        except ImportError as e:
            raise RuntimeUnavailable(f'OpenVINO INT8 needs NNCF ({e}); install it: '
                                     f'{OPENVINO_INSTALL}')
    if precision == 'bf16':
        caps = ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
        if 'BF16' not in caps:
            raise RuntimeUnavailable(
                f'OpenVINO bf16: this CPU has no bf16 kernels (OpenVINO\'s capabilities here: '
                f'{", ".join(caps)}; /proc/cpuinfo flags: {" ".join(cpu_info()["flags"])}), so '
                'it would silently run f32. Use f32 or int8 on this machine.')


def openvino_model(onnx_path):
    """The ONNX file as an OpenVINO model (``openvino.convert_model``, which replaces the
    Model Optimizer ``mo`` that mmdeploy 1.3.1 calls and OpenVINO no longer ships)."""
    ov = import_openvino()
    try:
        return ov.convert_model(onnx_path)
    except Exception as e:  # OpenVINO raises its own exception types per frontend
        import onnx
        custom = sorted({f'{n.domain}::{n.op_type}' for n in onnx.load(onnx_path).graph.node
                         if n.domain not in ('', 'ai.onnx')})
        hint = (f' The graph has operators outside the ONNX standard, which OpenVINO cannot run: '
                f'{", ".join(custom)} (a model part whose export mmdeploy writes as a custom op; '
                'run it with ONNX Runtime and mmdeploy\'s custom ops instead).' if custom else '')
        raise RuntimeUnavailable(f'OpenVINO cannot convert {onnx_path}: '
                                 f'{str(e).strip().splitlines()[0]}{hint}') from e


#: The operations that make a scope of node names a model layer (see :func:`layer_scopes`).
LAYER_TYPES = ('Convolution', 'GroupConvolution', 'ConvolutionBackpropData', 'MatMul')
_NOT_OPERATIONS = ('Constant', 'Parameter', 'Result')  # left out of scopes and marks


def layer_scopes(model):
    """{operation name: its scope} for ``model`` (openvino.Model converted from an exported
    ONNX graph), where a scope is the first part of the torch module path in the node name
    (``'/backbone/stages.0/...'`` -> ``'backbone'``) and None outside every module (the
    post-processing functions: ``'/Pad'``, ``'/Concat_80'``). Operations OpenVINO's ONNX
    frontend created while converting a node (named like ``'Multiply_123'``) take the scope
    of the first named operation they feed. Constants, parameters and results are left out."""
    return {name: scope for name, (scope, kind) in _scopes(model).items()
            if kind not in _NOT_OPERATIONS}


def _scopes(model):
    """{operation name: (scope, type name)} of every operation (see :func:`layer_scopes`)."""
    def own(name):
        parts = name.split('/')
        if not name.startswith('/'):
            return ...  # not an ONNX node's name
        return parts[1] if len(parts) > 2 else None

    scopes = {}
    for op in reversed(model.get_ordered_ops()):
        name = op.get_friendly_name()
        scope = own(name)
        if scope is ...:
            consumers = [target.get_node() for out in op.outputs()
                         for target in out.get_target_inputs()]
            scope = next((scopes[c.get_friendly_name()][0] for c in consumers
                          if c.get_friendly_name() in scopes), None)
        scopes[name] = scope, op.get_type_name()
    return scopes


#: Operations outside the layers that read the layers' features, left out of
#: :func:`outside_layers`: marked, RoIAlign would take its feature maps in f32 (OpenVINO's CPU
#: plugin converts every FPN level to f32 for it: 50 of 294 ms of the L1 demo detector at
#: 800x1333 in bf16), while the plugin keeps its RoI input in f32 anyway.
FEATURE_READERS = ('ROIAlign',)


def outside_layers(model):
    """Names of ``model``'s operations outside its layers: those whose scope
    (:func:`layer_scopes`) holds no convolution or matrix product, except the
    :data:`FEATURE_READERS`. In a detector these are the RoI extractors' coordinate arithmetic
    (level assignment, RoI selection, scatter) and every post-processing function (box
    decoding, clipping, NMS, TopK, mask pasting); in a segmentor the final resize and
    argmax."""
    scopes = _scopes(model)
    layers = {scope for scope, kind in scopes.values() if kind in LAYER_TYPES}
    return sorted(name for name, (scope, kind) in scopes.items()
                  if scope not in layers and kind not in FEATURE_READERS
                  and kind not in _NOT_OPERATIONS)


def keep_in_f32(xml, names):
    """Rewrites the IR ``xml`` (in place, atomically) so that its layers ``names`` run in f32
    whatever inference precision it is compiled with, and returns how many it marked.

    The mark is OpenVINO's ``DisablePrecisionConversion`` runtime attribute (conversion to
    f16 disabled), with which its CPU plugin keeps a node's original precision when it lowers
    the rest of the graph to bf16 (``keepOriginalPrecision`` of the plugin's node). OpenVINO's
    Python API cannot create that attribute; its IR reader does, from the layer's
    ``rt_info``. Nodes the plugin creates itself while compiling (a decomposed subtraction,
    a fused multiply) carry no mark and take the precision hint (docs/openvino.md says which
    ones remain)."""
    import xml.etree.ElementTree as ET
    from .fileio import atomic_write
    wanted = set(names)
    tree = ET.parse(xml)
    found = set()
    for layer in tree.getroot().find('layers'):
        if layer.get('name') not in wanted:
            continue
        info = layer.find('rt_info')
        if info is None:
            info = ET.Element('rt_info')
            layer.insert(1 if layer.find('data') is not None else 0, info)
        if not any(a.get('name') == 'DisablePrecisionConversion' for a in info):
            ET.SubElement(info, 'attribute', name='DisablePrecisionConversion', version='0',
                          value='dynamic:f16')
        found.add(layer.get('name'))
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f'{xml}: no layers named {missing[:5]} ({len(missing)} in all)')
    atomic_write(lambda f: tree.write(f, encoding='utf-8', xml_declaration=True), xml)
    return len(found)


def quantize_openvino(model, inputs, keep_float=(), preset='mixed'):
    """``model`` (openvino.Model) with its convolutions and matrix products quantized to INT8
    by NNCF's post-training quantization (weights per output channel, activations per tensor,
    ranges from ``inputs``), everything else left in float: every other operation type is
    in NNCF's ignored scope, so post-processing (NMS, TopK, RoIAlign, box decoding),
    normalisations, pooling and resizes never get quantizers. ``keep_float``: regular
    expressions of node names also kept in float (e.g. ``'backbone/stages.3'``).

    Args:
        model (openvino.Model): Float model.
        inputs (list[numpy.ndarray]): Calibration inputs (one array per forward; shapes may
            differ where the model's are dynamic). At least one.
        keep_float (Sequence[str]): Node name patterns not to quantize.
        preset (str): NNCF's 'mixed' (asymmetric activations) or 'performance'.
    """
    check_openvino('int8')
    import nncf
    if not len(inputs):
        raise ValueError('INT8 quantization needs calibration inputs, got none')
    quantized_types = {'Convolution', 'GroupConvolution', 'MatMul'}
    ops = list(model.get_ops())
    others = sorted({op.get_type_name() for op in ops} - quantized_types)
    layers = [op.get_friendly_name() for op in ops if op.get_type_name() in quantized_types]
    unmatched = [p for p in keep_float if not any(re.search(p, name) for name in layers)]
    if unmatched:
        raise ValueError(f'keep_float {unmatched} match no quantized layer of the model (its '
                         f'layers are named like {layers[:3]})')
    scope = nncf.IgnoredScope(types=others, patterns=[f'.*(?:{p})' for p in keep_float],
                              validate=False)
    logger = logging.getLogger('nncf')  # one INFO line per layer it leaves alone
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        # NNCF's default (convolutional) model type: its TRANSFORMER type, which adds
        # SmoothQuant, lost 1.2 box AP on the L1 demo detector where this lost none
        # (docs/openvino.md)
        return nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs),
                             preset=nncf.QuantizationPreset(preset), ignored_scope=scope)
    finally:
        logger.setLevel(level)


def compile_openvino(model, precision='f32', threads=None):
    """``model`` (openvino.Model or IR / ONNX path) compiled by OpenVINO's CPU plugin for
    latency. ``precision`` is the inference precision of what is not quantized: 'f32' (set
    explicitly: on CPUs with bf16 kernels OpenVINO picks bf16 by default), 'bf16', or 'int8'
    (an INT8 model from :func:`quantize_openvino`; its float part runs f32; running it needs
    no NNCF)."""
    check_openvino('f32' if precision == 'int8' else precision)
    config = {'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32',
              'PERFORMANCE_HINT': 'LATENCY'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    if _DENORMALS['flushed']:
        config['CPU_DENORMALS_OPTIMIZATION'] = True
    return import_openvino().Core().compile_model(model, 'CPU', config)


def runtime_info(runtime, device='cpu', threads=None):
    """What a timing depends on: runtime and its version, torch, threads, dtype, CPU or GPU."""
    version = torch.__version__
    if runtime == 'onnxruntime':
        import onnxruntime
        version = onnxruntime.__version__
    elif runtime.startswith('openvino'):
        import openvino
        version = openvino.__version__
    info = dict(runtime=runtime, runtime_version=version, torch_version=torch.__version__,
                device=device, threads=threads or torch.get_num_threads(),
                dtype=dict(f32='fp32').get(runtime_precision(runtime),
                                           runtime_precision(runtime)), cpu=cpu_info(),
                allocator=allocator_state() if runtime.startswith('torch') else
                f'{runtime} arena', denormals=denormal_state())
    if device == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    return info


class Compiled:
    """A module compiled for one runtime at one input shape.

    ``native(x)`` converts a torch tensor to the runtime's input; ``run(x)`` runs one forward on
    a native input and returns the runtime's outputs (a native array / tensor, or a tuple for
    several outputs), ready to feed to the next compiled module.
    """

    def __init__(self, run, native):
        self.run, self.native = run, native


def _as_list(out):
    return [out] if torch.is_tensor(out) else list(out)


def _torch_compiled(module, device, dtype):
    module = module.to(device) if dtype is None else module.to(device, dtype)

    def native(x):
        x = x.to(device)
        return x.to(dtype) if dtype is not None else x

    def run(x):
        with torch.inference_mode():
            return module(x)
    return Compiled(run, native)


def _onnx_file(module, example, workdir):
    from .deploy import export_onnx
    path = os.path.join(workdir, 'model.onnx')
    return path, export_onnx(module, example, path)


def check_outputs(name, outputs, refs, tol):
    """Errors of ``outputs`` (arrays) against ``refs`` (tensors), each relative to the largest
    magnitude of its reference; raises :class:`RuntimeError` beyond ``tol``."""
    errors = []
    for out, ref in zip(outputs, refs):
        ref = ref.float().cpu().numpy()
        scale = max(float(abs(ref).max()), 1e-12)
        errors.append(float(abs(out - ref).max()) / scale)
    bad = [f'output {i}: {e:.2e}' for i, e in enumerate(errors) if not e <= tol]
    if bad:
        raise RuntimeError(f'{name} differs from PyTorch beyond {tol} relative ({", ".join(bad)})'
                           ': not timing it')
    return errors


def _numpy_native(x):
    return x.detach().float().cpu().contiguous().numpy()


def _as_list_np(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def compile_module(module, example, runtime='torch', device='cpu', threads=None, workdir=None,
                   name=None, spin=True):
    """Compiles an inference module for ``runtime`` at ``example``'s shape (see the module
    docstring). Exported runtimes are checked against PyTorch on ``example`` first.

    Args:
        module (nn.Module): In eval mode (e.g. deployed); single tensor input.
        example (Tensor): An input of the shape to run.
        runtime (str): One of :data:`RUNTIMES`.
        device (str): 'cpu' or 'cuda' (torch runtimes only).
        threads (int, optional): Intra-op threads of onnxruntime / OpenVINO (default: torch's).
        workdir (str, optional): Where ONNX files go and stay (default: a temporary folder,
            removed once the runtime holds the compiled model: a table build compiles one
            model per entry and visit).
        name (str, optional): For messages.
        spin (bool): onnxruntime only: whether the session's threads spin, waiting for work,
            after a run (its default). Several sessions run in turn share the cores: spinning
            threads of one slow the next down (measured here: block tables twice the whole
            network), so sessions that only set the stage for another are compiled without.
    """
    check_available(runtime, device)
    name = name or type(module).__name__
    threads = threads or torch.get_num_threads()
    if runtime.startswith('torch'):
        return _torch_compiled(module, device,
                               torch.bfloat16 if runtime == 'torch-bf16' else None)
    if workdir is not None:
        return _compile_exported(module, example, runtime, threads, workdir, name, spin)
    with tempfile.TemporaryDirectory(prefix='mmef-onnx-') as tmp:
        return _compile_exported(module, example, runtime, threads, tmp, name, spin)


def _compile_exported(module, example, runtime, threads, workdir, name, spin):
    """:func:`compile_module` for onnxruntime / OpenVINO: the ONNX file written in
    ``workdir``, then loaded and compiled (the runtime keeps the model in memory)."""
    path, refs = _onnx_file(module, example, workdir)
    single = torch.is_tensor(refs) or len(refs) == 1
    feed_example = _numpy_native(example)
    if runtime == 'onnxruntime':
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        if _DENORMALS['flushed']:
            options.add_session_config_entry('session.set_denormal_as_zero', '1')
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        input_name = session.get_inputs()[0].name

        def run(x):
            out = session.run(None, {input_name: x})
            return out[0] if single else tuple(out)
        tol = RUNTIME_TOL['f32']
    else:
        precision = runtime_precision(runtime)
        model = openvino_model(path)
        if precision == 'int8':
            gen = torch.Generator().manual_seed(0)
            calib = [feed_example] + [_numpy_native(torch.randn(example.shape, generator=gen)
                                                    * example.std() + example.mean())
                                      for _ in range(3)]
            model = quantize_openvino(model, calib)
        compiled = compile_openvino(model, precision, threads)
        request = compiled.create_infer_request()
        outputs = compiled.outputs

        def run(x):
            result = request.infer([x])
            out = [result[o] for o in outputs]
            return out[0] if single else tuple(out)
        tol = RUNTIME_TOL[precision]
    check_outputs(f'{name} ({runtime})', _as_list_np(run(feed_example)), _as_list(refs), tol)
    return Compiled(run, _numpy_native)


_LIBC = []
_ALLOCATOR = {'kept': False}
_DENORMALS = {'flushed': False}
# glibc's mallopt parameters and the largest mmap threshold it accepts (64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20


def _libc():
    if not _LIBC:
        import ctypes
        import ctypes.util
        try:
            libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            _LIBC.append(libc if hasattr(libc, 'mallopt') else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def keep_freed_memory():
    """Keeps freed buffers of up to 32 MB in the process's heap for reuse (glibc ``mallopt``:
    mmap threshold 32 MB, its maximum, and no trimming), process-wide.

    With glibc's defaults, a deployed backbone's large activation buffers go back to the
    system when freed and fault fresh pages in on every forward: measured here, 17 % of the
    deployed L1's time at 512x512 (docs/latency.md). The same is set from outside the process
    with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``. Buffers
    over 32 MB are still mapped and unmapped each time (glibc refuses a higher threshold).
    The process keeps its peak heap. Returns False where the C library is not glibc (nothing
    done).
    """
    libc = _libc()
    if libc is None:
        return False
    import ctypes
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and \
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    _ALLOCATOR['kept'] = bool(ok)
    return bool(ok)


def flush_denormals(enabled=True):
    """Flushes denormal floats to zero (FTZ / DAZ) in PyTorch, process-wide, and makes the
    onnxruntime sessions and OpenVINO models this module compiles afterwards do the same
    (``enabled=False``: back to IEEE denormals, the default, for what is compiled afterwards).

    Denormals (|x| < 1.2e-38) are computed in microcode on x86, up to 100x slower: a softmax of
    large logits gives them, and every product with those probabilities pays. Measured here
    (Intel Xeon, AMX, 2 threads): V2-S0's attention downsampling at 512x512 took 11-24 ms
    inside the network against 4.5 ms on a random input of the same shape, and 4.5 ms in the
    network with denormals flushed (docs/latency.md). Flushing changes results by less than
    1.2e-38 per value. Returns False where the CPU cannot (nothing done)."""
    ok = bool(torch.set_flush_denormal(enabled))
    _DENORMALS['flushed'] = ok and enabled
    return ok


def denormal_state():
    """'flushed' (:func:`flush_denormals`) or 'kept' (IEEE denormals, the default)."""
    return 'flushed' if _DENORMALS['flushed'] else 'kept'


def allocator_state():
    """How this process's C heap treats freed memory: 'kept' (:func:`keep_freed_memory` or
    the equivalent MALLOC_* environment variables) or 'glibc default'."""
    env = {k: v for k, v in os.environ.items()
           if k in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'LD_PRELOAD')}
    if _ALLOCATOR['kept']:
        return 'kept (mmef.runtimes.keep_freed_memory)'
    return f'environment {env}' if env else 'glibc default'


BUSY_SPREAD = 2.0


class BusyMachine(RuntimeError):
    """Timings too spread out to be a quiet machine's: other processes share the cores."""


def spread(times):
    """Ratio of the third to the first quartile of ``times`` (1.0 for fewer than 2 runs)."""
    if len(times) < 2:
        return 1.0
    q1, _, q3 = statistics.quantiles(times, n=4, method='inclusive')
    return q3 / q1 if q1 > 0 else float('inf')


def busy(times, limit=BUSY_SPREAD):
    """{label: (q1, q3)} of the labels of ``times`` ({label: [runs]}) whose runs spread
    beyond ``limit`` (q3 > limit * q1). On a quiet machine the quartiles of repeated runs of
    one model differ by a few per cent; load from other processes lands on some runs and not
    on others (measured here: runs of one entry from 0.75 to 59 ms). ``limit`` 0 (or None)
    checks nothing."""
    if not limit:
        return {}
    out = {}
    for label, ts in times.items():
        if spread(ts) > limit:
            q1, _, q3 = statistics.quantiles(ts, n=4, method='inclusive')
            out[label] = (q1, q3)
    return out


def busy_message(what, spreads, limit):
    """The reason a timing was not kept: ``spreads`` from :func:`busy` (of times in ms), the
    limit, and the load average of the machine."""
    worst = sorted(spreads.items(), key=lambda kv: kv[1][0] / kv[1][1])[:4]
    runs = '; '.join(f'{label}: quartiles {q1:.2f} .. {q3:.2f} ms '
                     f'({q3 / q1:.1f}x)' for label, (q1, q3) in worst)
    try:
        load = ', load average {:.1f} / {:.1f} / {:.1f}'.format(*os.getloadavg())
    except OSError:
        load = ''
    return (f'the machine is busy: the runs of {what} spread beyond {limit:g}x between their '
            f'quartiles ({runs}{" ..." if len(spreads) > 4 else ""}){load} on '
            f'{os.cpu_count()} CPUs. Timings taken now would measure the other processes: '
            'stop them (or wait) and run again; pass a larger --busy-spread only if this spread '
            'is the runtime\'s own')


def timer(device='cpu'):
    """A function ``time(fn, *args)`` returning (seconds, fn's result); CUDA events on CUDA."""
    if device == 'cuda':
        def time_cuda(fn, *args):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000, out
        return time_cuda

    def time_cpu(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, out
    return time_cpu
