"""tools/train.py, test.py, infer.py and the dist scripts: real runs on tiny synthetic data, the
round trip train -> test -> inference -> resume, and the tool fault cases of issue 7."""
import errno
import glob
import io
import json
import os
import os.path as osp
import pickle
import subprocess

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmef  # noqa: F401
from mmef import fileio
from mmef.engine import find_resume_checkpoint
from tool_helpers import (DET_DEMO, PYTHON, ROOT, SEG_DEMO, as_argv, det_options, seg_options,
                          subprocess_env, tiny_ade, tiny_coco)
from tools import infer
from tools import test as test_tool
from tools import train as train_tool


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('tooldata')
    return dict(coco=tiny_coco(str(root / 'coco')), ade=tiny_ade(str(root / 'ade')))


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- fault cases
def test_config_path_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='config file .*nope.py.* does not exist'):
        train_tool.main([str(tmp_path / 'nope.py')])
    with pytest.raises(FileNotFoundError, match='is a directory'):
        test_tool.main([str(tmp_path), 'x.pth'])


def test_config_of_other_codebase(tmp_path):
    path = tmp_path / 'cls.py'
    path.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    with pytest.raises(ValueError, match="default_scope='mmpretrain'"):
        train_tool.main([str(path)])


def test_work_dir_is_a_file(tmp_path):
    afile = tmp_path / 'taken'
    afile.write_text('not a directory')
    with pytest.raises(NotADirectoryError, match='is a file, not a directory'):
        train_tool.main([SEG_DEMO, '--work-dir', str(afile)])
    with pytest.raises(NotADirectoryError, match='is a file'):
        train_tool.main([SEG_DEMO, '--work-dir', str(afile / 'sub')])


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint to resume from'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--resume'])
    with pytest.raises(FileNotFoundError, match='checkpoint file does not exist'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--resume',
                         str(tmp_path / 'iter_9.pth')])


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU refusal is tested on CPU')
def test_amp_without_gpu(tmp_path):
    with pytest.raises(RuntimeError, match='--amp needs a CUDA GPU'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--amp'])


def test_test_tool_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        test_tool.main([SEG_DEMO, str(tmp_path / 'missing.pth')])
    bad = tmp_path / 'truncated.pth'
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.zeros(100)}}, buf)
    bad.write_bytes(buf.getvalue()[:200])
    with pytest.raises(mmef.checkpoint.CheckpointError, match='truncated, corrupt'):
        test_tool.main([SEG_DEMO, str(bad)])


def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    """A disk-full error while saving leaves the previous checkpoint byte-identical."""
    from mmengine.runner.checkpoint import save_checkpoint
    path = str(tmp_path / 'latest.pth')
    backend = dict(backend=fileio.BACKEND_NAME)
    save_checkpoint({'state_dict': {'w': torch.ones(3)}, 'meta': {'iter': 1}}, path,
                    backend_args=backend)
    old = open(path, 'rb').read()

    real_fdopen = os.fdopen

    class DiskFull(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[:len(data) // 2]))  # part of it lands, then the disk fills
            raise OSError(errno.ENOSPC, 'No space left on device')

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

    monkeypatch.setattr(fileio.os, 'fdopen', lambda fd, mode: DiskFull(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match='previous file there, if any, is unchanged; free disk'):
        save_checkpoint({'state_dict': {'w': torch.zeros(1000)}, 'meta': {'iter': 2}}, path,
                        backend_args=backend)
    monkeypatch.undo()
    assert open(path, 'rb').read() == old
    assert os.listdir(tmp_path) == ['latest.pth']  # the temporary file was removed
    assert torch.load(path)['meta']['iter'] == 1


def test_find_resume_checkpoint(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) is None
    for name in ('iter_2.pth', 'iter_10.pth', '.iter_12.pth.abc.tmp', 'best.pth'):
        (tmp_path / name).write_bytes(b'x')
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_2.pth')
    # a pointer cut short by a kill, or naming a file that is gone: newest file on disk
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_'))
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')


# ----------------------------------------------------------------------------- round trips
def _state(path):
    return torch.load(path, map_location='cpu')  # torch 2.13 default: weights_only=True


def _image_changed(src, out):
    a, b = cv2.imread(src), cv2.imread(out)
    assert b is not None and b.shape == a.shape
    return np.abs(a.astype(int) - b.astype(int)).mean() > 0.5


def test_det_round_trip(data, tmp_path):
    """Mask R-CNN: train 1 epoch (2 iterations) + evaluation, test, inference, resume."""
    from mmdet.apis import inference_detector, init_detector
    work = str(tmp_path / 'work')
    opts = det_options(data['coco'], epochs=1)
    runner = train_tool.main([DET_DEMO, '--work-dir', work] + as_argv(opts))
    ckpt = osp.join(work, 'epoch_1.pth')
    saved = _state(ckpt)
    assert saved['meta']['epoch'] == 1 and saved['meta']['iter'] == 2
    val = {k: runner.message_hub.get_scalar(f'val/coco/{k}').current()
           for k in ('bbox_mAP_50', 'segm_mAP_50')}
    assert all(0 <= v <= 1 for v in val.values())

    metrics = test_tool.main([DET_DEMO, ckpt, '--work-dir', work, '--show-dir', 'shown',
                              '--out', str(tmp_path / 'results.pkl')] + as_argv(opts))
    shown = glob.glob(osp.join(work, '*', 'shown', '*.jpg'))
    assert len(shown) == 2, shown  # one drawing per validation image
    with open(tmp_path / 'results.pkl', 'rb') as f:
        assert len(pickle.load(f)) == 2
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0 <= metrics[key] <= 1
    # test on the saved weights reproduces the validation at the end of training
    assert metrics['coco/bbox_mAP_50'] == pytest.approx(val['bbox_mAP_50'], abs=1e-6)

    cfg = Config.fromfile(DET_DEMO)
    model = init_detector(cfg, ckpt, device='cpu')
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved['state_dict'][key]), key
    assert model.dataset_meta['classes'] == ('circle', 'square', 'triangle', 'star')
    image = sorted(os.listdir(osp.join(data['coco'], 'val2017')))[0]
    image = osp.join(data['coco'], 'val2017', image)
    result = inference_detector(model, image)
    assert result.pred_instances.bboxes.shape[1] == 4
    out = str(tmp_path / 'vis' / 'det.jpg')
    infer.main([DET_DEMO, ckpt, image, '--out', out, '--score-thr', '0.0'])
    assert _image_changed(image, out)

    # resume: a second epoch continues at iteration 2 with the saved optimizer state
    opts = det_options(data['coco'], epochs=2)
    train_tool.main([DET_DEMO, '--work-dir', work, '--resume'] + as_argv(opts))
    resumed = _state(osp.join(work, 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == 2 and resumed['meta']['iter'] == 4
    steps = {int(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {4}, steps  # 2 saved steps + 2 new ones (a fresh optimizer would say 2)


def test_seg_round_trip(data, tmp_path):
    """Semantic FPN: train 2 iterations + evaluation, test, inference, resume."""
    from mmseg.apis import inference_model, init_model
    work = str(tmp_path / 'work')
    opts = seg_options(data['ade'], iters=2)
    train_tool.main([SEG_DEMO, '--work-dir', work] + as_argv(opts))
    ckpt = osp.join(work, 'iter_2.pth')
    saved = _state(ckpt)
    assert saved['meta']['iter'] == 2

    out_json = str(tmp_path / 'metrics.json')
    metrics = test_tool.main([SEG_DEMO, ckpt, '--work-dir', work, '--metrics-json', out_json] +
                             as_argv(opts))
    assert 0 <= metrics['mIoU'] <= 100 and 0 <= metrics['aAcc'] <= 100
    assert json.load(open(out_json))['mIoU'] == metrics['mIoU']

    model = init_model(Config.fromfile(SEG_DEMO), ckpt, device='cpu')
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved['state_dict'][key]), key
    image = osp.join(data['ade'], 'images/validation/ADE_val_00000001.jpg')
    result = inference_model(model, image)
    h, w = cv2.imread(image).shape[:2]
    assert tuple(result.pred_sem_seg.data.shape[-2:]) == (h, w)
    out = str(tmp_path / 'vis' / 'seg.jpg')
    infer.main([SEG_DEMO, ckpt, image, '--out', out])
    assert _image_changed(image, out)

    opts = seg_options(data['ade'], iters=3)
    train_tool.main([SEG_DEMO, '--work-dir', work, '--resume', ckpt] + as_argv(opts))
    resumed = _state(osp.join(work, 'iter_3.pth'))
    assert resumed['meta']['iter'] == 3
    assert {int(s['step']) for s in resumed['optimizer']['state'].values()} == {3}


def test_mmdet_own_train_script(data, tmp_path):
    """mmdet's tools/train.py, as shipped inside the mmdet package, trains our config."""
    import mmdet
    script = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(script), script
    work = str(tmp_path / 'work')
    opts = det_options(data['coco'], epochs=1)
    opts['train_cfg.val_interval'] = 2  # training only
    proc = subprocess.run([PYTHON, script, DET_DEMO, '--work-dir', work] + as_argv(opts),
                          env=subprocess_env(), cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _state(osp.join(work, 'epoch_1.pth'))['meta']['iter'] == 2


RANK_DUMP_HOOK = """
import os
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankDumpHook(Hook):
    # each rank saves its own copy of the trained parameters (BN running statistics are
    # per rank between DDP's buffer broadcasts from rank 0, so they are not compared)
    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(params, os.path.join(runner.work_dir, f'rank{runner.rank}.pth'))
"""


SUPERNET_SEG_DEMO = osp.join(ROOT, 'configs/demo/fpn_efficientformer-supernet-l1_scenes-demo.py')
V2_SUPERNET_SEG_DEMO = osp.join(ROOT,
                                'configs/demo/fpn_efficientformerv2-supernet-s2_scenes-demo.py')
# a small V2 supernet, trained by the sandwich rule (smallest, 2 random, largest per iteration)
V2_SMALL = ("model = dict(backbone=dict(arch=dict(widths=(16, 24, 48, 64), depths=(2, 2, 3, 3), "
            "num_attn_blocks=2, mlp_ratios=((4, 4), (4, 4), (4, 4, 4), (4, 4, 4))), "
            "min_widths=(8, 8, 16, 24)), neck=dict(in_channels=[16, 24, 48, 64]))\n")


@pytest.mark.parametrize('base', [SEG_DEMO, SUPERNET_SEG_DEMO, V2_SUPERNET_SEG_DEMO],
                         ids=['l1', 'supernet', 'v2-supernet'])
def test_dist_train_two_cpu_processes_agree(base, data, tmp_path):
    """tools/dist_train.sh: 2 processes (torchrun, gloo) train the seg config, the supernet one
    (each rank draws its own Gumbel noise) and the V2 supernet one (the sandwich rule: passes
    under no_sync, the same random sub-networks on both ranks); ranks agree, architecture
    weights included."""
    (tmp_path / 'rank_dump.py').write_text(RANK_DUMP_HOOK)
    config = tmp_path / 'dist_cfg.py'
    config.write_text(f"_base_ = {base!r}\n"
                      "custom_imports = dict(imports=['mmef', 'rank_dump'], "
                      "allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='RankDumpHook')"
                      + (", dict(type='SupernetTemperatureHook')" if base == SUPERNET_SEG_DEMO
                         else '') + ']\n' + (V2_SMALL if base == V2_SUPERNET_SEG_DEMO else ''))
    work = str(tmp_path / 'work')
    opts = seg_options(data['ade'], iters=3, ckpt_interval=1)
    opts['train_dataloader.batch_size'] = 1
    env = subprocess_env()
    env.update(PYTHON=PYTHON, PORT=str(29500 + os.getpid() % 1000),
               PYTHONPATH=str(tmp_path) + os.pathsep + env['PYTHONPATH'])
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools/dist_train.sh'), str(config), '2',
                           '--work-dir', work] + as_argv(opts), env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'gloo backend, rank 0 of 2' in proc.stdout + proc.stderr
    assert ('loss_smallest' in proc.stdout + proc.stderr) == (base == V2_SUPERNET_SEG_DEMO)
    r0, r1 = (torch.load(osp.join(work, f'rank{r}.pth')) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    saved = _state(osp.join(work, 'iter_3.pth'))  # rank 0's checkpoint
    assert saved['meta']['iter'] == 3
    w = 'backbone.stem.conv1.conv.weight'
    assert torch.equal(saved['state_dict'][w], r0[w])
    # and the weights they agree on were trained: iteration 1 differs from iteration 3
    assert not torch.equal(_state(osp.join(work, 'iter_1.pth'))['state_dict'][w], r0[w])
    alphas = [k for k in r0 if k.endswith('.alpha')]
    assert len(alphas) == (15 if base == SUPERNET_SEG_DEMO else 0)
    assert all(r0[k].abs().sum() > 0 for k in alphas)  # trained away from their zero init
