"""`python -m mmef.check` reports the environment and fails with a fix when an item is broken."""
import re
import subprocess
import sys

from tool_helpers import ROOT


def run_check(prelude=''):
    code = f'{prelude}\nimport runpy\nrunpy.run_module("mmef.check", run_name="__main__")'
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)


def test_healthy_environment_passes():
    proc = run_check()
    assert proc.returncode == 0, proc.stderr
    for item in ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmcv ops',
                 'EfficientFormer registered for', 'torch.load weights_only by default'):
        assert item in proc.stdout
    assert 'yes (NMS ran)' in proc.stdout
    assert 'mmdet, mmseg' in proc.stdout
    assert re.search(r'^deploy stack +onnxruntime [\d.]+ \(session ran\), onnx [\d.]+; '
                     r'mmdeploy 1\.3\.1 \(mmef\.mmdeploy_compat registered\); '
                     r'openvino 2026\.4\.1\S* \(CPU: [A-Z0-9_, ]+\), nncf 3\.4\.0$', proc.stdout,
                     re.M), proc.stdout
    assert 'all checks passed' in proc.stdout


def test_missing_deploy_stack_fails_with_fix():
    proc = run_check("import sys; sys.modules['onnxruntime'] = None; "
                     "sys.modules['mmdeploy'] = None; sys.modules['openvino'] = None")
    assert proc.returncode == 1
    assert re.search(r'^deploy stack +no$', proc.stdout, re.M), proc.stdout
    assert 'onnxruntime does not run' in proc.stderr
    assert 'mmdeploy or mmef.mmdeploy_compat does not load' in proc.stderr
    assert 'pip install --no-deps -r requirements/deploy.txt' in proc.stderr
    assert re.search(r'OpenVINO / NNCF do not load .*requirements/openvino\.txt', proc.stderr)


def test_mmcv_without_ops_fails_with_fix():
    # what mmcv-lite looks like: the compiled extension mmcv._ext cannot be imported
    proc = run_check("import sys; sys.modules['mmcv._ext'] = None")
    assert proc.returncode == 1
    assert re.search(r'^mmcv ops +no$', proc.stdout, re.M), proc.stdout
    fix = [line for line in proc.stderr.splitlines() if 'mmcv compiled ops do not load' in line]
    assert len(fix) == 1 and 'MMCV_WITH_OPS=1' in fix[0] and 'mmcv==2.1.0' in fix[0]


def test_unregistered_backbone_fails_with_fix():
    prelude = ('import mmengine.registry as r, mmef.models as m\n'
               "r.MODELS._module_dict.pop('EfficientFormer')")
    proc = run_check(prelude)
    assert proc.returncode == 1
    assert 'EfficientFormer is not visible in mmdet.registry.MODELS' in proc.stderr
    assert "custom_imports=dict(imports=['mmef']" in proc.stderr


def test_wrong_mmcv_version_fails_with_fix():
    proc = run_check("import mmcv; mmcv.__version__ = '2.2.0'")
    assert proc.returncode == 1
    assert 'mmcv 2.2.0 is outside >=2.0,<2.2' in proc.stderr


def test_namespace_package_is_named(tmp_path):
    """mmef imported as an empty namespace package (a folder named mmef without __init__.py
    ahead of the real package on sys.path): the check says so instead of advising a reinstall."""
    (tmp_path / 'mmef').mkdir()
    script = tmp_path / 'run_check.py'
    script.write_text(
        'import os, sys\n'
        f'sys.path.insert(0, {ROOT!r})  # this checkout, whatever the environment installed\n'
        'import mmef.check as check  # the real module, loaded while the package is found\n'
        'assert check.__file__.startswith(sys.path[0]), check.__file__\n'
        'for name in [n for n in sys.modules if n == "mmef" or n.startswith("mmef.")]:\n'
        '    del sys.modules[name]\n'
        '# every real mmef package out of reach (this checkout and any other one an editable\n'
        '# install put on the path), an empty folder named mmef first on the path\n'
        'sys.path[:] = [p for p in sys.path\n'
        '               if not os.path.isfile(os.path.join(p or ".", "mmef", "__init__.py"))]\n'
        f'sys.path.insert(0, {str(tmp_path)!r})\n'
        'sys.exit(check.main())\n')
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path.parent))
    assert proc.returncode == 1
    assert 'namespace package' in proc.stderr and str(tmp_path / 'mmef') in proc.stderr, \
        proc.stderr
