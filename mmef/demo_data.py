"""Small synthetic datasets in the real COCO-2017 and ADE20K formats, deterministic from a seed.

They exist so the configs, mmdet's ``CocoDataset`` / ``CocoMetric`` and mmseg's
``ADE20KDataset`` / ``IoUMetric`` can be trained and evaluated for real, anywhere, in minutes:

* :func:`make_coco_shapes` writes ``annotations/instances_{train,val}2017.json`` (polygon masks)
  and JPEG images under ``{train,val}2017/``. Classes are shapes (circle, square, triangle,
  star); each class has a preferred hue range, but the ranges overlap, so colour alone does
  not tell the class. Instances vary in size and rotation and overlap one another (the masks
  are the visible parts). Backgrounds are gradients, noise and stripes.
* :func:`make_ade_scenes` writes ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` label maps in ADE20K's convention: 0 is "other"
  (ignored with ``reduce_zero_label=True``) and k is ADE20K class k, so mmseg's
  ``ADE20KDataset`` and its 150-class metainfo are used unchanged. Scenes have a sky with a
  wavy horizon, buildings, trees, a grass or road ground and people, each with its own texture.

The same seed gives byte-identical files (numpy's PCG64 and OpenCV's JPEG / PNG encoders).
"""
import json
import os
import os.path as osp

import cv2
import numpy as np

COCO_CLASSES = ('circle', 'square', 'triangle', 'star')
# preferred hue (OpenCV scale 0..180) of each class; +-HUE_SPREAD overlaps the neighbours
_CLASS_HUES = (0, 45, 90, 135)
HUE_SPREAD = 30

# ADE20K class indices (1-based, as stored in the PNG label maps) used by the scenes
ADE_IDS = dict(building=2, sky=3, tree=5, road=7, grass=10, person=13)


def _hsv_color(rng, hue, sat=(120, 255), val=(110, 255)):
    hsv = np.uint8([[[int(hue) % 180, rng.integers(*sat), rng.integers(*val)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng, h, w):
    """A random gradient, noise field or stripe pattern (float32 BGR)."""
    kind = rng.integers(3)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(t.ptp(), 1)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == 1:  # smooth noise
        small = rng.uniform(0, 1, (max(h // 16, 2), max(w // 16, 2), 1))
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        img = c0 * (1 - t) + c1 * t
    else:  # stripes
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / period * 2 * np.pi) > 0)
        img = np.where(t[..., None], c0, c1 * 0.5 + c0 * 0.5)
    img = img + rng.normal(0, 6, (h, w, 3))
    return img.astype(np.float32)


def _shape_polygon(rng, cls, cx, cy, r):
    """Outline of one shape (int32 points) of class ``cls`` centred at (cx, cy), radius r."""
    rot = rng.uniform(0, 2 * np.pi)
    if cls == 0:  # circle / ellipse with a mild aspect ratio
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ax = rng.uniform(0.8, 1.0)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r * ax], 1)
    elif cls == 1:  # square / rectangle
        a = rng.uniform(0.75, 1.0)
        pts = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], np.float64) * r * 0.8
    elif cls == 2:  # triangle
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.2, 0.2, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    else:  # five-pointed star
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.5))
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    c, s = np.cos(rot), np.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
    return np.round(pts).astype(np.int32)


def _coco_image(rng, h, w, max_objects):
    """Draws one image; returns (BGR uint8 image, list of (class index, visible mask))."""
    img = _background(rng, h, w)
    instances = []  # (cls, full mask), in drawing order
    for _ in range(rng.integers(2, max_objects + 1)):
        for _attempt in range(10):
            cls = int(rng.integers(len(COCO_CLASSES)))
            r = rng.uniform(0.09, 0.28) * min(h, w)
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [_shape_polygon(rng, cls, cx, cy, r)], 1)
            # allow overlap, but keep at least half of every earlier instance visible
            visible_ok = all(
                (prev & ~mask.astype(bool)).sum() >= 0.5 * prev.sum() for _, prev in instances)
            if mask.sum() > 0 and visible_ok:
                break
        else:
            continue
        hue = _CLASS_HUES[cls] + rng.uniform(-HUE_SPREAD, HUE_SPREAD)
        color = _hsv_color(rng, hue)
        shade = rng.uniform(0.75, 1.1, 3) if rng.uniform() < 0.5 else np.ones(3)
        yy = np.linspace(shade[0], shade[1], h)[:, None, None]  # a little shading
        img = np.where(mask[..., None].astype(bool), color * yy, img)
        instances.append((cls, mask.astype(bool)))
    # visible part of each instance: minus everything drawn later
    out = []
    for i, (cls, mask) in enumerate(instances):
        visible = mask.copy()
        for _, later in instances[i + 1:]:
            visible &= ~later
        out.append((cls, visible))
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), out


def _polygons(mask):
    """COCO polygons (lists of x, y floats) of a binary mask's outer contours."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def make_coco_shapes(root, num_train=200, num_val=50, size=(160, 192), max_objects=5, seed=0,
                     jpeg_quality=92):
    """Writes a COCO-2017-style instance segmentation dataset of shapes under ``root``.

    Args:
        root (str): Output folder; gets ``train2017/``, ``val2017/`` and ``annotations/``.
        num_train (int): Training images.
        num_val (int): Validation images.
        size (tuple[int, int]): Image sides are drawn uniformly from [size[0], size[1]].
        max_objects (int): At most this many instances per image (at least 2).
        seed (int): Random seed; the same seed writes the same files.
        jpeg_quality (int): JPEG quality of the images.

    Returns:
        dict: paths of the two annotation files and the class names.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory='shape')
                  for i, n in enumerate(COCO_CLASSES)]
    result = dict(classes=COCO_CLASSES)
    ann_id = 1
    for split, count, first_id in (('train2017', num_train, 1),
                                   ('val2017', num_val, 100000)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            img, instances = _coco_image(rng, h, w, max_objects)
            image_id = first_id + k
            name = f'{image_id:012d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img,
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            images.append(dict(id=image_id, file_name=name, width=w, height=h))
            for cls, mask in instances:
                polys = _polygons(mask)
                if not polys:
                    continue
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
                annotations.append(dict(id=ann_id, image_id=image_id, category_id=cls + 1,
                                        segmentation=polys, area=float(mask.sum()), bbox=bbox,
                                        iscrowd=0))
                ann_id += 1
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
        result[split] = ann_file
    return result


def _texture(rng, h, w, base, amp, scale):
    """base colour + smooth noise of the given spatial scale (float32 BGR)."""
    small = rng.normal(0, 1, (max(int(h / scale), 2), max(int(w / scale), 2), 1))
    noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    return (base + amp * noise).astype(np.float32)


def _ade_scene(rng, h, w):
    """One scene: (BGR uint8 image, uint8 label map with ADE20K class ids, 0 = other)."""
    label = np.zeros((h, w), np.uint8)
    img = np.zeros((h, w, 3), np.float32)

    def paint(mask, cls, texture):
        nonlocal img
        label[mask] = ADE_IDS[cls]
        img = np.where(mask[..., None], texture, img)

    yy, xx = np.mgrid[0:h, 0:w]
    # sky above a wavy horizon, ground below
    horizon = h * rng.uniform(0.35, 0.6) + h * 0.06 * np.sin(
        xx[0] / w * rng.uniform(2, 8) + rng.uniform(0, 6))
    sky = yy < horizon[None, :]
    grad = (yy / h)[..., None]
    sky_tex = _hsv_color(rng, rng.uniform(95, 115), (60, 200), (180, 255)) * (1 - 0.3 * grad)
    paint(sky, 'sky', sky_tex + rng.normal(0, 3, (h, w, 3)))
    ground_cls = 'grass' if rng.uniform() < 0.5 else 'road'
    if ground_cls == 'grass':
        tex = _texture(rng, h, w, _hsv_color(rng, rng.uniform(35, 55), (120, 230), (90, 200)),
                       25, 3)
    else:
        tex = _texture(rng, h, w, np.full(3, rng.uniform(70, 130), np.float32), 10, 6)
        lane = (np.abs(xx - w * rng.uniform(0.3, 0.7)) < max(w // 60, 1)) & \
            ((yy // max(h // 12, 1)) % 2 == 0)
        tex = np.where(lane[..., None], 230.0, tex)
    paint(~sky, ground_cls, tex)
    # buildings standing on the horizon
    for _ in range(rng.integers(0, 4)):
        bw, bh = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.15, 0.45))
        x0 = int(rng.uniform(0, w - bw))
        base_y = int(horizon[min(x0 + bw // 2, w - 1)]) + int(h * 0.05)
        m = (xx >= x0) & (xx < x0 + bw) & (yy >= base_y - bh) & (yy < base_y)
        wall = _hsv_color(rng, rng.uniform(5, 25), (20, 120), (90, 200))
        windows = ((xx - x0) % 8 < 3) & ((yy - base_y) % 10 < 4)
        paint(m, 'building', np.where(windows[..., None], wall * 0.45, wall) +
              rng.normal(0, 4, (h, w, 3)))
    # trees: clusters of dark green blobs on a trunk
    for _ in range(rng.integers(0, 4)):
        cx, r = rng.uniform(0, w), h * rng.uniform(0.06, 0.14)
        cy = float(horizon[int(np.clip(cx, 0, w - 1))]) + rng.uniform(-0.05, 0.1) * h
        m = np.zeros((h, w), bool)
        for _ in range(4):
            ox, oy = rng.normal(0, r * 0.5, 2)
            m |= (xx - cx - ox) ** 2 + (yy - cy + r - oy) ** 2 < r ** 2
        m |= (np.abs(xx - cx) < r * 0.15) & (yy > cy - r) & (yy < cy + r * 0.8)
        paint(m, 'tree', _texture(rng, h, w, _hsv_color(rng, rng.uniform(55, 75), (150, 255),
                                                         (40, 110)), 20, 2))
    # people: a body ellipse and a head, in warm or purple clothing
    for _ in range(rng.integers(0, 4)):
        ph = h * rng.uniform(0.12, 0.3)
        cx, feet = rng.uniform(0.05, 0.95) * w, rng.uniform(0.65, 0.98) * h
        body = ((xx - cx) / (ph * 0.18)) ** 2 + ((yy - feet + ph * 0.4) / (ph * 0.4)) ** 2 < 1
        head = (xx - cx) ** 2 + (yy - feet + ph * 0.88) ** 2 < (ph * 0.12) ** 2
        cloth = _hsv_color(rng, rng.choice([0, 10, 150, 165]) + rng.uniform(-5, 5))
        skin = _hsv_color(rng, 12, (60, 140), (150, 230))
        paint(body | head, 'person', np.where(head[..., None], skin, cloth) +
              rng.normal(0, 5, (h, w, 3)))
    # unlabelled clutter ("other", ignored by the metric): small grey squares
    for _ in range(rng.integers(0, 3)):
        s = int(min(h, w) * rng.uniform(0.04, 0.1))
        x0, y0 = int(rng.uniform(0, w - s)), int(rng.uniform(0, h - s))
        m = (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s)
        label[m] = 0
        img = np.where(m[..., None], rng.uniform(0, 255), img)
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_ade_scenes(root, num_train=200, num_val=50, size=(128, 160), seed=0, jpeg_quality=92):
    """Writes an ADE20K-style semantic segmentation tree of synthetic outdoor scenes.

    Args:
        root (str): Output folder (the ``ADEChallengeData2016`` level): gets
            ``images/{training,validation}/*.jpg`` and ``annotations/{...}/*.png``.
        num_train (int): Training images.
        num_val (int): Validation images.
        size (tuple[int, int]): Image sides are drawn uniformly from [size[0], size[1]].
        seed (int): Random seed; the same seed writes the same files.
        jpeg_quality (int): JPEG quality of the images.

    Returns:
        dict: the class ids used (:data:`ADE_IDS`) and the two image folders.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    rng = np.random.default_rng(seed)
    result = dict(class_ids=dict(ADE_IDS))
    for split, count in (('training', num_train), ('validation', num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        prefix = 'train' if split == 'training' else 'val'
        for k in range(count):
            h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            img, label = _ade_scene(rng, h, w)
            name = f'ADE_{prefix}_{k + 1:08d}'
            cv2.imwrite(osp.join(img_dir, name + '.jpg'), img,
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
        result[split] = img_dir
    return result
