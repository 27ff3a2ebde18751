"""Environment self-check: ``python -m mmef.check``.

Prints the versions of the stack, whether mmcv's compiled ops run, whether the backbone is
registered where mmdet and mmseg look, how torch loads checkpoints, and whether the deploy stack
(onnxruntime, mmdeploy with mmef's compatibility module) works. Exits 1 with a one-line fix per
broken item.
"""
import argparse
import importlib
import io
import sys

SETUP = 'bash scripts/setup.sh'
MMCV_FIX = ('rebuild mmcv with its ops: pip uninstall -y mmcv mmcv-lite && MMCV_WITH_OPS=1 '
            'FORCE_CUDA=0 pip install --no-build-isolation mmcv==2.1.0 (or run ' + SETUP + ')')


def _reason(err, limit=None):
    """An exception as one line: its type and the first line of its message."""
    return f'{type(err).__name__}: {err}'.splitlines()[0][:limit]


def _version(name):
    try:
        return importlib.import_module(name).__version__, None
    except Exception as err:  # report any import failure, not only ImportError
        return None, _reason(err)


def check_versions():
    rows, problems = [], []
    fixes = {'torch': 'pip install torch==2.13.0 (CPU) or the build matching your CUDA',
             'mmcv': MMCV_FIX, 'mmengine': 'pip install mmengine==0.10.7',
             'mmdet': 'pip install mmdet==3.3.0', 'mmseg': 'pip install mmsegmentation==1.2.2'}
    for name in fixes:
        version, err = _version(name)
        rows.append((name, version or 'missing'))
        if err:
            problems.append(f'{name} does not import ({err}); fix: {fixes[name]}')
    version, _ = _version('mmcv')
    if version:
        major_minor = tuple(int(p) for p in version.split('.')[:2])
        if not (2, 0) <= major_minor < (2, 2):
            problems.append(f'mmcv {version} is outside >=2.0,<2.2 that mmdet 3.3 / mmseg 1.2.2 '
                            f'accept; fix: {MMCV_FIX}')
    return rows, problems


def check_mmcv_ops():
    try:
        import torch
        from mmcv.ops import nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
        if keep.tolist() != [0, 2]:
            return 'no', [f'mmcv NMS returned {keep.tolist()}, expected [0, 2]; fix: {MMCV_FIX}']
        return 'yes (NMS ran)', []
    except Exception as err:
        msg = _reason(err)
        return 'no', [f'mmcv compiled ops do not load ({msg}); fix: {MMCV_FIX}']


def check_registry():
    found, problems = [], []
    try:
        import mmef  # noqa: F401
    except Exception as err:
        return 'no', [f'mmef does not import ({err}); fix: pip install -e . (or {SETUP})']
    if getattr(mmef, '__file__', None) is None:
        # a folder named mmef without __init__.py (e.g. a clone, seen from its parent folder)
        return 'no', [f'"import mmef" finds {list(mmef.__path__)} as an empty namespace package, '
                      f'not the mmef package: a folder named mmef without __init__.py comes '
                      f'first on sys.path (often the current folder); fix: start Python in '
                      f'another folder, or rename that folder']
    for scope, module in (('mmdet', 'mmdet.registry'), ('mmseg', 'mmseg.registry')):
        try:
            registry = importlib.import_module(module).MODELS
            cls = registry.get('EfficientFormer')
            if cls is None or registry.get('mmef.EfficientFormer') is not cls:
                raise LookupError('EfficientFormer not found')
            found.append(scope)
        except Exception as err:
            problems.append(f'EfficientFormer is not visible in {module}.MODELS ({err}); fix: '
                            f'reinstall mmef (pip install -e .) and add custom_imports='
                            f"dict(imports=['mmef'], allow_failed_imports=False) to the config")
    return (', '.join(found) or 'no'), problems


def check_weights_only():
    """Whether torch.load defaults to weights_only, and whether our allowlist copes with it."""
    import torch
    from mmengine.logging import HistoryBuffer
    buf = io.BytesIO()
    history = HistoryBuffer()
    history.update(1.0)  # numpy-backed, as in every runner checkpoint's message hub
    torch.save({'args': argparse.Namespace(lr=1.), 'hub': history}, buf)
    try:
        buf.seek(0)
        torch.load(buf)
    except Exception as err:
        msg = _reason(err, 200)
        return 'yes, and runner checkpoints fail to load', [
            f'torch.load rejects runner checkpoints ({msg}); fix: import mmef before loading '
            f"(custom_imports=dict(imports=['mmef']) in the config)"]
    default = _weights_only_default(torch)
    return f'{"yes" if default else "no"}; runner and original checkpoints load (allowlist)', []


def _weights_only_default(torch):
    """Saves a Fraction (a type nobody allowlists) and sees whether a plain torch.load refuses it."""
    import fractions
    buf = io.BytesIO()
    torch.save(fractions.Fraction(1, 3), buf)
    buf.seek(0)
    try:
        torch.load(buf)
        return False
    except Exception:
        return True


DEPLOY_FIX = ('pip install onnx onnxruntime && pip install --no-deps -r requirements/deploy.txt '
              '(or ' + SETUP + ')')


def check_deploy_stack():
    """onnxruntime runs a one-node model, mmdeploy imports and mmef's compatibility module
    registers in it (the deploy stack scripts/setup.sh installs)."""
    versions, problems = [], []
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
        graph = helper.make_graph(
            [helper.make_node('Relu', ['x'], ['y'])], 'check',
            [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
        model.ir_version = min(model.ir_version, 8)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=['CPUExecutionProvider'])
        out = session.run(None, {'x': np.array([-1., 2.], dtype=np.float32)})[0]
        if out.tolist() != [0., 2.]:
            raise RuntimeError(f'a Relu session returned {out.tolist()}')
        versions.append(f'onnxruntime {ort.__version__} (session ran), onnx {onnx.__version__}')
    except Exception as err:
        msg = _reason(err, 200)
        problems.append(f'onnxruntime does not run ({msg}); fix: {DEPLOY_FIX}')
    try:
        import mmdeploy
        from mmdeploy.codebase.mmseg.deploy import segmentation_model

        import mmef.mmdeploy_compat  # noqa: F401
        registered = getattr(segmentation_model, '__BACKEND_MODEL').get('mmef_end2end')
        if registered is None:
            raise LookupError('mmef_end2end is not in mmdeploy\'s backend models')
        versions.append(f'mmdeploy {mmdeploy.__version__} (mmef.mmdeploy_compat registered)')
    except Exception as err:
        msg = _reason(err, 200)
        problems.append(f'mmdeploy or mmef.mmdeploy_compat does not load ({msg}); fix: '
                        f'{DEPLOY_FIX}')
    try:
        import nncf
        import openvino as ov
        caps = ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
        versions.append(f'openvino {ov.__version__} (CPU: {", ".join(caps)}), '
                        f'nncf {nncf.__version__}')
    except Exception as err:
        msg = _reason(err, 200)
        problems.append(f'OpenVINO / NNCF do not load ({msg}); fix: bash scripts/setup.sh (or '
                        '.venv/bin/pip install -r requirements/openvino.txt)')
    return ('; '.join(versions) or 'no'), problems


def main():
    rows, problems = check_versions()
    checks = [('mmcv ops', check_mmcv_ops), ('EfficientFormer registered for', check_registry),
              ('torch.load weights_only by default', check_weights_only),
              ('deploy stack', check_deploy_stack)]
    for label, fn in checks:
        try:
            value, found = fn()
        except Exception as err:
            value, found = 'error', [f'{label}: {type(err).__name__}: {err}; fix: {SETUP}']
        rows.append((label, value))
        problems += found
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f'{key:<{width}}  {value}')
    if problems:
        print(f'\n{len(problems)} problem(s):', file=sys.stderr)
        for p in problems:
            print(f'  - {p}', file=sys.stderr)
        return 1
    print('\nall checks passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
