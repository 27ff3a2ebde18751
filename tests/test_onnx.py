"""tools/export_onnx.py: the deployed backbone in onnxruntime equals PyTorch (unfused) to 1e-4."""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from mmef.deploy import is_deployed
from weights import randomize

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install '
                          'onnxruntime); ONNX parity cannot be checked')

_spec = importlib.util.spec_from_file_location(
    'export_onnx', Path(__file__).resolve().parents[1] / 'tools' / 'export_onnx.py')
export_onnx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_onnx)


def randomized_l1():
    return randomize(export_onnx.build_backbone('l1'), seed=1).eval()


def test_onnx_matches_unfused_pytorch(tmp_path):
    model = randomized_l1()
    x = torch.randn(1, 3, 160, 224)
    with torch.enable_grad():  # unfused, plain-kernel reference
        expected = [o.detach() for o in copy.deepcopy(model)(x)]
    path = tmp_path / 'l1.onnx'
    deployed_out = export_onnx.export(model, x, str(path))
    assert is_deployed(model)  # export deploys the model it is given
    session = export_onnx.ort_session(str(path), threads=1)
    assert max(export_onnx.relative_errors(session, x, expected)) <= 1e-4
    assert max(export_onnx.relative_errors(session, x, deployed_out)) <= 1e-4
    # the bias of this size is baked in: no resize of the table left in the graph
    import onnx
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert 'Resize' not in ops and 'Conv' in ops and 'BatchNormalization' not in ops


def test_cli_exports_checks_and_times(tmp_path, capsys):
    out = tmp_path / 'sub' / 'l1.onnx'
    code = export_onnx.main(['--arch', 'l1', '--size', '96', '128', '--out', str(out),
                             '--runs', '1', '--threads', '1'])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert 'OK: onnxruntime matches PyTorch' in text and 'onnxruntime' in text


def test_semantic_fpn_export(tmp_path):
    pytest.importorskip('mmseg', reason='mmsegmentation is not installed')
    config = Path(__file__).resolve().parents[1] / 'configs' / 'semantic_fpn' / \
        'fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py'
    model = export_onnx.build_segmentor(str(config))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    path = tmp_path / 'fpn.onnx'
    export_onnx.export(model, x, str(path))
    session = export_onnx.ort_session(str(path), threads=1)
    assert expected.shape == (1, 150, 32, 32)
    assert max(export_onnx.relative_errors(session, x, [expected])) <= 1e-4


@pytest.mark.parametrize('size', [(160, 224), (224, 160)])
def test_v2_backbone_onnx_matches_unfused(tmp_path, size):
    model = randomize(export_onnx.build_backbone('v2-s0'), seed=2).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    path = tmp_path / 's0.onnx'
    export_onnx.export(model, x, str(path))
    session = export_onnx.ort_session(str(path), threads=1)
    assert max(export_onnx.relative_errors(session, x, expected)) <= 1e-4


def test_v2_semantic_fpn_export(tmp_path):
    config = Path(__file__).resolve().parents[1] / 'configs' / 'semantic_fpn' / \
        'fpn_efficientformerv2-s0_8xb4-40k_ade20k-512x512.py'
    model = export_onnx.build_segmentor(str(config))
    randomize(model.segmentor.backbone, seed=3)
    model.eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    path = tmp_path / 'fpn_s0.onnx'
    export_onnx.export(model, x, str(path))
    session = export_onnx.ort_session(str(path), threads=1)
    assert expected.shape == (1, 150, 32, 40)
    assert max(export_onnx.relative_errors(session, x, [expected])) <= 1e-4


@pytest.mark.parametrize('arch,mode', [('l1', 'relative'), ('l1', 'official'),
                                       ('v2-s0', 'relative'), ('v2-s0', 'official')])
def test_dynamic_export_right_at_other_sizes(tmp_path, arch, mode):
    """Exported once at 256x352 with dynamic height / width: onnxruntime equals the deployed
    PyTorch model at the transposed grid (same token count, other layout) and at another token
    count, in both bias modes (the bias is computed in the graph from the sizes seen)."""
    cls, name = export_onnx.ARCHS[arch]
    model = randomize(cls(name, attn_bias_mode=mode,
                          attn_bias_resolution=7 if mode == 'relative' else 16), seed=4).eval()
    path = tmp_path / 'dyn.onnx'
    export_onnx.export(model, torch.randn(1, 3, 256, 352), str(path), dynamic=True)
    session = export_onnx.ort_session(str(path), threads=1)
    for size in [(352, 256), (192, 320)]:
        x = torch.randn(1, 3, *size)
        errors = export_onnx.relative_errors(session, x, export_onnx.reference_outputs(model, x))
        assert max(errors) <= 1e-4, (size, errors)


def test_cli_dynamic(tmp_path, capsys):
    out = tmp_path / 'l1_dyn.onnx'
    code = export_onnx.main(['--arch', 'l1', '--size', '128', '192', '--out', str(out),
                             '--runs', '0', '--threads', '1', '--dynamic'])
    text = capsys.readouterr().out
    assert code == 0 and 'dynamic batch / height / width' in text
    assert 'at 192x128 (not the export size)' in text and 'at 96x128' in text
