"""tools/demo.py end to end (the README's main job), on tiny data and a 2-iteration schedule.

The real run's metrics are measured by ``make demo`` (docs/usage.md); this checks the glue:
data written once per setting, both configs trained and evaluated, the metrics it prints are
the run's own, the pictures come from the saved checkpoints, and ``--strict`` fails on a miss.
"""
import glob
import json
import os.path as osp
import re

import cv2
import torch
from mmengine.config import Config

from tool_helpers import DET_DEMO, SEG_DEMO, det_options, seg_options
from tools import demo


def _tiny_task(monkeypatch, tmp_path, task, base, options, make):
    data = str(tmp_path / f'{task}_data')
    cfg = Config.fromfile(base)
    cfg.merge_from_dict(options(data))
    config = str(tmp_path / f'{task}.py')
    cfg.dump(config)
    entry = dict(demo.TASKS[task], config=config, data=data, make=make,
                 work_dir=str(tmp_path / f'{task}_work'),
                 picture=str(tmp_path / f'{task}.jpg'))
    monkeypatch.setitem(demo.TASKS, task, entry)
    return entry


def _logged(work_dir, key):
    """The last value of ``key`` in the run's own scalars log."""
    values = []
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            records = [json.loads(line) for line in f]
        values += [r[key] for r in records if key in r]
    assert values, f'{key} not logged under {work_dir}'
    return values[-1]


def test_demo_main(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # main() changes to the repository; restored afterwards
    det = _tiny_task(monkeypatch, tmp_path, 'det', DET_DEMO,
                     lambda root: det_options(root, epochs=1),
                     dict(fn='make_coco_shapes', num_train=4, num_val=2, size=(96, 128)))
    seg = _tiny_task(monkeypatch, tmp_path, 'seg', SEG_DEMO,
                     lambda root: seg_options(root, iters=2),
                     dict(fn='make_ade_scenes', num_train=4, num_val=2, size=(64, 96)))
    # box AP50 is always met, mask AP50 (0.4) cannot be after two steps from scratch
    det['metrics'] = [(name, key, scale, 0.0 if name == 'box AP50' else target)
                      for name, key, scale, target in det['metrics']]
    threads = str(torch.get_num_threads())

    rc = demo.main(['--strict', '--threads', threads])
    out = capsys.readouterr().out
    assert rc == 1
    assert re.search(r'box AP50\s+[\d.]+\s+target >= 0.0: met', out)
    assert re.search(r'mask AP50\s+[\d.]+\s+target >= 0.4: MISSED', out)
    printed = float(re.search(r'mIoU\s+([\d.]+)', out).group(1))
    assert printed == round(_logged(seg['work_dir'], 'mIoU') / 100, 3)  # IoUMetric: percent
    printed = float(re.search(r'mask AP50\s+([\d.]+)', out).group(1))
    assert printed == round(_logged(det['work_dir'], 'coco/segm_mAP_50'), 3)
    for task in (det, seg):
        picture = cv2.imread(task['picture'])
        assert picture is not None and picture.shape == (256, 512, 3)  # 2 validation images
        assert osp.isfile(osp.join(task['data'], 'mmef_demo.json'))

    # the same settings reuse the data; without --strict a miss is not an error
    assert demo.main(['--only', 'seg', '--threads', threads]) == 0
    assert 'up to date' in capsys.readouterr().out


def test_demo_trains_v2(monkeypatch, tmp_path, capsys):
    """--arch v2-s0: the same demo with an EfficientFormerV2 backbone (two iterations)."""
    monkeypatch.chdir(tmp_path)
    seg = _tiny_task(monkeypatch, tmp_path, 'seg', SEG_DEMO,
                     lambda root: seg_options(root, iters=2),
                     dict(fn='make_ade_scenes', num_train=4, num_val=2, size=(64, 96)))
    threads = str(torch.get_num_threads())
    assert demo.main(['--only', 'seg', '--arch', 'v2-s0', '--threads', threads]) == 0
    out = capsys.readouterr().out
    assert '(v2-s0): trained + evaluated' in out
    ckpt = torch.load(osp.join(seg['work_dir'] + '_v2-s0', 'iter_2.pth'), map_location='cpu')
    assert 'backbone.stages.3.downsample.attn.bias_table' in ckpt['state_dict']
    assert cv2.imread(seg['picture'][:-4] + '_v2-s0.jpg') is not None
