"""tools/convert_checkpoint.py and mmef.checkpoint.convert: outputs, summary, determinism, faults.

Source files are written by the tests in the original layouts (tests/_original_ref.py) with random
non-trivial weights. Fault cases (issue 7): every failure is a clear error naming the file, and an
existing DST is never modified.
"""
import errno
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from _original_ref import (make_original_backbone, save_imagenet_checkpoint,
                           save_mmcv1_checkpoint)
from mmef.checkpoint import CheckpointError
from mmef.checkpoint import convert as convert_mod
from mmef.checkpoint.convert import convert_checkpoint, format_summary
from mmef.checkpoint.keys import DROP_INDEX, DROP_PLACEHOLDER, detect_format, to_mmef

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_checkpoint.py')
# neck / head tensors of an mmdet 2.x Mask R-CNN / mmseg 0.x Semantic FPN file (names only matter)
DET_KEYS = {'neck.lateral_convs.0.conv.weight': (256, 48, 1, 1),
            'rpn_head.rpn_conv.weight': (256, 256, 3, 3),
            'roi_head.bbox_head.fc_cls.weight': (81, 1024)}
SEG_KEYS = {'neck.fpn_convs.0.conv.weight': (256, 256, 3, 3),
            'decode_head.scale_heads.0.0.conv.weight': (128, 256, 3, 3),
            'decode_head.conv_seg.weight': (150, 128, 1, 1)}


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def _dense_file(path, arch, resolution, heads, seed=0):
    backbone = make_original_backbone(arch, resolution, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    full = {'backbone.' + k: v for k, v in backbone.items()}
    full.update({k: torch.randn(*s, generator=g) for k, s in heads.items()})
    save_mmcv1_checkpoint(path, full)
    return backbone, full


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('convert')
    imagenet = make_original_backbone('l1', None, seed=1, num_classes=10)
    save_imagenet_checkpoint(root / 'in1k.pth', imagenet)
    coco_backbone, coco = _dense_file(root / 'coco.pth', 'l1', 25, DET_KEYS, seed=2)
    ade_backbone, ade = _dense_file(root / 'ade.pth', 'l1', 16, SEG_KEYS, seed=3)
    return dict(root=root, imagenet=imagenet, coco=coco, coco_backbone=coco_backbone, ade=ade)


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_imagenet_file_becomes_a_tensor_only_state_dict(files, tmp_path):
    dst = tmp_path / 'l1_in1k_mmef.pth'
    s = convert_checkpoint(files['root'] / 'in1k.pth', dst)
    out = torch.load(dst, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    _assert_same(out, to_mmef(files['imagenet']))
    assert out['stem.conv1.conv.weight'].equal(files['imagenet']['patch_embed.0.weight'])
    assert out['stages.3.attn_blocks.0.attn.bias_table'].equal(
        files['imagenet']['network.6.4.token_mixer.attention_biases'])
    assert (s['format'], s['kind'], s['arch']) == ('original', 'imagenet', 'l1')
    assert s['dropped_entries'] == ['args', 'epoch', 'lr_scheduler', 'optimizer']
    assert list(s['dropped']) == ['network.6.4.token_mixer.attention_bias_idxs']
    assert s['left_over'] == [] and s['missing'] == []
    assert sorted(s['classifier']) == ['dist_head.bias', 'dist_head.weight', 'head.bias',
                                       'head.weight', 'norm.bias', 'norm.weight']
    assert s['needs']['attn_bias_resolution'] is None


@pytest.mark.parametrize('name,resolution,kind,config', [
    ('coco', 25, 'detection', 'mask-rcnn_efficientformer-l1_fpn_1x_coco.py'),
    ('ade', 16, 'segmentation', 'fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py')])
def test_dense_runner_file_keeps_the_whole_model(files, tmp_path, name, resolution, kind, config):
    dst = tmp_path / f'{name}_mmef.pth'
    s = convert_checkpoint(files['root'] / f'{name}.pth', dst)
    converted = torch.load(dst, weights_only=True)
    # the classes of the mmcv 1.x file (meta.CLASSES) are kept for the inference APIs
    assert converted['meta'] == {'dataset_meta': {'classes': ('person', 'bicycle')}}
    out = converted['state_dict']
    src = files[name]
    heads = {k: v for k, v in src.items() if not k.startswith('backbone.')}
    backbone = {k[9:]: v for k, v in src.items() if k.startswith('backbone.')}
    expected = {'backbone.' + k: v for k, v in to_mmef(backbone).items()}
    expected.update(heads)
    _assert_same(out, expected)
    assert not any('attention_bias' in k or k.endswith('_idxs') for k in out)
    assert out['backbone.stages.3.attn_blocks.0.attn.bias_table'].equal(
        src['backbone.network.6.4.token_mixer.attention_biases_seg'])
    assert out['backbone.norm3.weight'].equal(src['backbone.norm6.weight'])
    assert (s['kind'], s['attn_bias_resolution']) == (kind, resolution)
    assert s['needs']['attn_bias_mode'] == 'official'
    assert s['needs']['config'] == config
    assert sorted(s['dropped'].items()) == [
        ('network.6.4.token_mixer.attention_bias_idxs', DROP_INDEX),
        ('network.6.4.token_mixer.attention_bias_idxs_seg', DROP_INDEX),
        ('network.6.4.token_mixer.attention_biases', DROP_PLACEHOLDER)]
    assert s['dropped_entries'] == ['meta', 'optimizer']
    text = format_summary(s)
    assert f'attn_bias_resolution={resolution}' in text
    assert (f'--cfg-options model.backbone.attn_bias_mode=official '
            f'model.backbone.attn_bias_resolution={resolution} '
            f'model.backbone.init_cfg=None') in text
    assert 'dropped 2: index buffer' in text and 'dropped 1: zero placeholder' in text


def test_mmef_file_is_a_no_op_and_output_is_deterministic(files, tmp_path):
    for name in ('coco', 'in1k'):
        a, b, c = (tmp_path / f'{name}_{i}.pth' for i in 'abc')
        convert_checkpoint(files['root'] / f'{name}.pth', a)
        convert_checkpoint(files['root'] / f'{name}.pth', b)
        s = convert_checkpoint(a, c)
        assert _bytes(a) == _bytes(b) == _bytes(c), name
        assert s['format'] == 'mmef' and s['renamed'] == 0 and not s['dropped']
        first, again = torch.load(a, weights_only=True), torch.load(c, weights_only=True)
        if name == 'coco':  # kept classes survive a second conversion
            assert first['meta'] == again['meta'] == {
                'dataset_meta': {'classes': ('person', 'bicycle')}}
            first, again = first['state_dict'], again['state_dict']
        _assert_same(first, again)


def test_mappings_are_pure_and_idempotent(files):
    for sd in (files['imagenet'], files['coco_backbone']):
        before = dict(sd)
        once = to_mmef(sd)
        assert detect_format(sd) == 'original' and detect_format(once) == 'mmef'
        _assert_same(to_mmef(once), once)
        _assert_same(sd, before)  # the input is not modified


def test_missing_tensors_are_reported(files, tmp_path):
    sd = {k: v for k, v in files['imagenet'].items() if not k.startswith('network.4.5.')}
    save_imagenet_checkpoint(tmp_path / 'part.pth', sd)
    s = convert_checkpoint(tmp_path / 'part.pth', tmp_path / 'part_mmef.pth')
    assert s['arch'] == 'l1'
    assert 'stages.2.blocks.5.ls1.gamma' in s['missing'] and len(s['missing']) == 16
    assert 'WARNING missing 16 tensors' in format_summary(s)


# ---------------------------------------------------------------- command line
def _cli(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_cli_converts_refuses_to_overwrite_and_forces(files, tmp_path):
    dst = tmp_path / 'out.pth'
    ok = _cli(files['root'] / 'coco.pth', dst)
    assert ok.returncode == 0, ok.stderr
    assert 'attn_bias_resolution=25' in ok.stdout and 'sha256' in ok.stdout
    first = _bytes(dst)
    again = _cli(files['root'] / 'in1k.pth', dst)
    assert again.returncode == 1
    assert again.stderr.strip().count('\n') == 0  # one line
    assert 'already exists' in again.stderr and '--force' in again.stderr
    assert _bytes(dst) == first
    forced = _cli(files['root'] / 'in1k.pth', dst, '--force')
    assert forced.returncode == 0, forced.stderr
    assert _bytes(dst) != first and 'stem.conv1.conv.weight' in torch.load(dst,
                                                                            weights_only=True)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / 'truncated.pth'
    torch.save({'a': torch.zeros(100)}, bad)
    bad.write_bytes(_bytes(bad)[:200])
    res = _cli(bad, tmp_path / 'out.pth')
    assert res.returncode == 1
    assert res.stderr.startswith('error: ') and res.stderr.strip().count('\n') == 0
    assert str(bad) in res.stderr and 'truncated' in res.stderr
    assert not (tmp_path / 'out.pth').exists()


# ---------------------------------------------------------------- faults (issue 7)
class _Payload:
    """Unpickling this calls open(path, 'w'): it would create the marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def _write_bad(kind, path, files):
    if kind == 'truncated':
        full = _bytes(files['root'] / 'coco.pth')
        path.write_bytes(full[:len(full) // 2])
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'zip_not_checkpoint':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('readme.txt', 'not a checkpoint')
    elif kind == 'text':
        path.write_text('model = dict(type="MaskRCNN")\n')
    elif kind == 'pickle_payload_zip':
        torch.save({'state_dict': _Payload(str(path) + '.marker')}, path)
    elif kind == 'pickle_payload_raw':  # protocol 2: the unpickler reaches the GLOBAL
        with open(path, 'wb') as f:
            pickle.dump({'state_dict': _Payload(str(path) + '.marker')}, f, protocol=2)
    elif kind == 'pickle_payload_raw_p4':  # protocol 4: stopped earlier, at a FRAME opcode
        with open(path, 'wb') as f:
            pickle.dump({'state_dict': _Payload(str(path) + '.marker')}, f, protocol=4)
    elif kind == 'resnet':
        g = torch.Generator().manual_seed(0)
        torch.save({'state_dict': {'conv1.weight': torch.randn(64, 3, 7, 7, generator=g),
                                   'bn1.weight': torch.ones(64),
                                   'layer1.0.conv1.weight': torch.randn(64, 64, 1, 1),
                                   'fc.weight': torch.randn(10, 2048)}}, path)
    elif kind == 'tensor':
        torch.save(torch.zeros(3), path)


@pytest.mark.parametrize('kind,error,fragment', [
    ('truncated', CheckpointError, 'truncated, corrupt or not a PyTorch checkpoint'),
    ('empty', CheckpointError, 'truncated, corrupt or not a PyTorch checkpoint'),
    ('zip_not_checkpoint', CheckpointError, 'truncated, corrupt or not a PyTorch checkpoint'),
    ('text', CheckpointError, 'not a readable PyTorch checkpoint'),
    ('pickle_payload_zip', CheckpointError, 'could run arbitrary code'),
    ('pickle_payload_raw', CheckpointError, 'could run arbitrary code'),
    ('pickle_payload_raw_p4', CheckpointError, 'not a readable PyTorch checkpoint'),
    ('resnet', CheckpointError, 'is not an EfficientFormer checkpoint'),
    ('tensor', CheckpointError, 'holds no state dict of tensors'),
])
def test_bad_source_fails_clearly_and_leaves_dst(files, tmp_path, kind, error, fragment):
    src = tmp_path / f'{kind}.pth'
    _write_bad(kind, src, files)
    dst = tmp_path / 'good.pth'
    dst.write_bytes(b'previous good file')
    with pytest.raises(error) as info:
        convert_checkpoint(src, dst, force=True)
    assert fragment in str(info.value) and str(src) in str(info.value)
    assert dst.read_bytes() == b'previous good file'
    assert not os.path.exists(str(src) + '.marker')  # the payload never ran
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, dst.name])  # no temp file left


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    """Proves the pickle payload above really creates its marker, so the refusal test can fail."""
    probe = tmp_path / 'probe.marker'
    pickle.loads(pickle.dumps(_Payload(str(probe)))).close()
    assert probe.exists()


@pytest.mark.parametrize('case', ['missing', 'directory'])
def test_missing_or_directory_source(tmp_path, case):
    src = tmp_path / 'nothing.pth'
    if case == 'directory':
        src.mkdir()
    expected = FileNotFoundError if case == 'missing' else IsADirectoryError
    with pytest.raises(expected, match='does not exist|is a directory'):
        convert_checkpoint(src, tmp_path / 'out.pth')
    assert not (tmp_path / 'out.pth').exists()


def test_bad_destinations(files, tmp_path):
    src = files['root'] / 'in1k.pth'
    with pytest.raises(IsADirectoryError, match='is a directory'):
        convert_checkpoint(src, tmp_path, force=True)
    with pytest.raises(FileNotFoundError, match='does not exist; create it first'):
        convert_checkpoint(src, tmp_path / 'no_such_dir' / 'out.pth')
    existing = tmp_path / 'exists.pth'
    existing.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='already exists; pass --force'):
        convert_checkpoint(src, existing)
    assert existing.read_bytes() == b'keep me'


def test_failed_write_leaves_previous_file(files, tmp_path, monkeypatch):
    """A disk-full style failure half way through the save: DST keeps its old bytes."""
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'previous good file')
    real_save = torch.save

    def save_then_fail(obj, f):
        real_save({'partial': torch.zeros(10)}, f)
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(convert_mod.torch, 'save', save_then_fail)
    with pytest.raises(OSError, match='could not write .* No space left on device.*unchanged'):
        convert_checkpoint(files['root'] / 'in1k.pth', dst, force=True)
    assert dst.read_bytes() == b'previous good file'
    assert os.listdir(tmp_path) == ['out.pth']


def test_mmengine_runner_checkpoint_and_dataparallel_prefix(files, tmp_path):
    """An mmef training checkpoint (message hub, schedulers) and a 'module.'-prefixed file."""
    from mmengine.logging import HistoryBuffer
    convert_checkpoint(files['root'] / 'coco.pth', tmp_path / 'coco_mmef.pth')
    weights = torch.load(tmp_path / 'coco_mmef.pth', weights_only=True)['state_dict']
    hub = HistoryBuffer()
    hub.update(0.5)
    torch.save({'meta': {'epoch': 3, 'iter': 300}, 'state_dict': weights,
                'message_hub': {'log_scalars': {'train/loss': hub}},
                'optimizer': {'state': {}, 'param_groups': []}, 'param_schedulers': []},
               tmp_path / 'epoch_3.pth')
    s = convert_checkpoint(tmp_path / 'epoch_3.pth', tmp_path / 'epoch_3_mmef.pth')
    assert (s['format'], s['kind']) == ('mmef', 'detection')
    assert s['dropped_entries'] == ['message_hub', 'meta', 'optimizer', 'param_schedulers']
    _assert_same(torch.load(tmp_path / 'epoch_3_mmef.pth', weights_only=True), weights)

    wrapped = {'module.' + k: v for k, v in files['imagenet'].items()}
    save_imagenet_checkpoint(tmp_path / 'ddp.pth', wrapped)
    convert_checkpoint(tmp_path / 'ddp.pth', tmp_path / 'ddp_mmef.pth')
    _assert_same(torch.load(tmp_path / 'ddp_mmef.pth', weights_only=True),
                 to_mmef(files['imagenet']))
