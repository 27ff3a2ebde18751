"""Long runs: a training process SIGKILLed in the middle of writing a checkpoint resumes from its
last complete checkpoint with the same iteration count and optimizer state (issue 7)."""
import glob
import os.path as osp
import signal
import subprocess
import time

import torch

import mmef  # noqa: F401
from mmef.engine import find_resume_checkpoint
from tool_helpers import PYTHON, ROOT, SEG_DEMO, as_argv, seg_options, subprocess_env, tiny_ade
from tools import train as train_tool


def _iter_of(path):
    return int(osp.basename(path)[len('iter_'):-len('.pth')])


def test_sigkill_then_resume(tmp_path):
    data = tiny_ade(str(tmp_path / 'ade'))
    work = str(tmp_path / 'work')
    opts = seg_options(data, iters=500, ckpt_interval=1)
    opts['default_hooks.checkpoint.max_keep_ckpts'] = 2
    proc = subprocess.Popen([PYTHON, osp.join(ROOT, 'tools/train.py'), SEG_DEMO, '--work-dir',
                             work] + as_argv(opts), env=subprocess_env(), cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill while the second checkpoint is being written: the moment a torn file would appear
    # if saving were not atomic (mmef_atomic writes '.iter_N.pth.<random>.tmp', then renames)
    try:
        deadline = time.time() + 240
        partial = []
        while not partial:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, 'no second checkpoint write within 240 s'
            if glob.glob(osp.join(work, 'iter_*.pth')):
                partial = glob.glob(osp.join(work, '.iter_*.pth.*.tmp'))
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    print(f'killed while writing {osp.basename(partial[0])}')

    complete = sorted(glob.glob(osp.join(work, 'iter_*.pth')), key=_iter_of)
    assert complete
    for path in complete:  # every visible checkpoint is whole: the save is atomic
        ckpt = torch.load(path, map_location='cpu')
        assert ckpt['meta']['iter'] == _iter_of(path)
    last = find_resume_checkpoint(work)
    assert last == complete[-1]
    killed_at = _iter_of(last)
    before = torch.load(last, map_location='cpu')

    # resume for one more iteration
    opts['train_cfg.max_iters'] = killed_at + 1
    opts['train_cfg.val_interval'] = 10 ** 6
    torch.set_num_threads(1)
    runner = train_tool.main([SEG_DEMO, '--work-dir', work, '--resume'] + as_argv(opts))
    assert runner.iter == killed_at + 1
    after = torch.load(osp.join(work, f'iter_{killed_at + 1}.pth'), map_location='cpu')
    assert after['meta']['iter'] == killed_at + 1
    # the optimizer went on from the saved state: one more AdamW step on every parameter
    steps_before = {k: int(s['step']) for k, s in before['optimizer']['state'].items()}
    steps_after = {k: int(s['step']) for k, s in after['optimizer']['state'].items()}
    assert set(steps_before.values()) == {killed_at}
    assert steps_after == {k: v + 1 for k, v in steps_before.items()}
    # and the learning-rate schedule too
    assert after['param_schedulers'][0]['last_step'] == before['param_schedulers'][0][
        'last_step'] + 1
