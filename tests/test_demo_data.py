"""The synthetic datasets: deterministic from the seed, valid COCO / ADE20K files, non-trivial."""
import filecmp
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from mmef.demo_data import ADE_IDS, COCO_CLASSES, make_ade_scenes, make_coco_shapes


def _same_tree(a, b):
    files_a = sorted(os.path.relpath(osp.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    files_b = sorted(os.path.relpath(osp.join(d, f), b) for d, _, fs in os.walk(b) for f in fs)
    assert files_a == files_b
    return all(filecmp.cmp(osp.join(a, f), osp.join(b, f), shallow=False) for f in files_a)


def test_coco_shapes_deterministic_and_valid(tmp_path):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    info = make_coco_shapes(a, num_train=6, num_val=3, seed=3)
    make_coco_shapes(b, num_train=6, num_val=3, seed=3)
    make_coco_shapes(c, num_train=6, num_val=3, seed=4)
    assert _same_tree(a, b)
    assert not _same_tree(a, c)

    coco = COCO(info['train2017'])
    assert [coco.cats[i]['name'] for i in sorted(coco.cats)] == list(COCO_CLASSES)
    assert len(coco.imgs) == 6
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.imgs]
    assert min(per_image) >= 1 and max(per_image) >= 3
    overlaps = 0
    for img_id, img in coco.imgs.items():
        im = cv2.imread(osp.join(a, 'train2017', img['file_name']))
        assert im.shape[:2] == (img['height'], img['width'])
        boxes = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            mask = coco.annToMask(ann)
            # the polygon rasterises back to the recorded area (within contour rounding)
            assert abs(mask.sum() - ann['area']) <= 0.2 * ann['area'] + 20
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1
            assert w > 4 and h > 4
            boxes.append((x, y, x + w, y + h))
        for i in range(len(boxes)):
            for j in range(i):
                p, q = boxes[i], boxes[j]
                overlaps += min(p[2], q[2]) > max(p[0], q[0]) and min(p[3], q[3]) > max(p[1], q[1])
    assert overlaps > 0  # instances overlap one another


def test_ade_scenes_deterministic_and_valid(tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    make_ade_scenes(a, num_train=6, num_val=2, seed=5)
    make_ade_scenes(b, num_train=6, num_val=2, seed=5)
    assert _same_tree(a, b)
    seen = set()
    for split, n in (('training', 6), ('validation', 2)):
        names = sorted(os.listdir(osp.join(a, 'images', split)))
        assert len(names) == n and all(x.endswith('.jpg') for x in names)
        for name in names:
            img = cv2.imread(osp.join(a, 'images', split, name))
            label = cv2.imread(osp.join(a, 'annotations', split, name[:-4] + '.png'),
                               cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.ndim == 2
            assert label.shape == img.shape[:2]
            values = set(np.unique(label).tolist())
            assert values <= {0} | set(ADE_IDS.values())
            assert len(values - {0}) >= 2  # several classes in every scene
            seen |= values
    assert seen >= {ADE_IDS['sky'], ADE_IDS['person']}


def test_bad_sizes_rejected(tmp_path):
    with pytest.raises(ValueError, match='num_train and num_val must be >= 1'):
        make_coco_shapes(str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match='num_train and num_val must be >= 1'):
        make_ade_scenes(str(tmp_path), num_val=0)
