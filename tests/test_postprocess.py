"""mmef.mmdeploy_compat's detection post-processing (what the exported Mask R-CNN graph runs, in
ONNX Runtime and OpenVINO alike), run eagerly on crafted inputs against mmdet's own heads, and
the export check's tolerances at the values tools/deploy.py uses.

Each case is built so that one specific way of getting mmdet's post-processing wrong changes the
result (a mutation run of the end-to-end tests found these survived): the RPN's NMS per FPN
level (not over all levels at once), its ``min_bbox_size``, the box head's per-class boxes (not
the best class's box for every class), the twin IoU of 0.99 and a single missing twin among
mmdet's top 20."""
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import mmef  # noqa: F401

pytest.importorskip('mmdeploy', reason='mmdeploy is installed by scripts/setup.sh')
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures.bbox import bbox_overlaps  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from mmef import mmdeploy_compat as compat  # noqa: E402
from mmef.export_check import (DETECTION_TOLERANCE, compare_detections,  # noqa: E402
                               match_detections)

register_all_modules(init_default_scope=False)
IMG = (120, 152)  # image (H, W): strides 4 and 8 give 30x38 and 15x19 maps


def _build(cfg):
    with DefaultScope.overwrite_default_scope('mmdet'):  # whatever scope earlier tests left
        return MODELS.build(cfg)


def _rpn_head():
    head = _build(dict(
        type='RPNHead', in_channels=8, feat_channels=8,
        anchor_generator=dict(type='AnchorGenerator', scales=[4], ratios=[1.0],
                              strides=[4, 8]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[1.0] * 4),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)))
    return head.eval()


def _rewriting():
    """mmdeploy's rewriter context for the ONNX Runtime backend, in which the graph is traced
    (its rewrites of torch functions, e.g. topk at most the input's size, are active)."""
    from mmdeploy.core import RewriterContext
    from mmdeploy.utils import load_config
    from tool_helpers import ROOT
    deploy_cfg = load_config(f'{ROOT}/configs/mmdeploy/instance-seg_onnxruntime_dynamic.py')[0]
    return RewriterContext(cfg=deploy_cfg, backend='onnxruntime', opset=11)


def _rpn_cfg(min_bbox_size):
    return ConfigDict(nms_pre=400, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7),
                      min_bbox_size=min_bbox_size)


def _rpn_inputs(seed):
    """Objectness and deltas at two levels. Level 1's anchors (32 px) at every second position
    of level 0's grid regress onto the level-0 box there (16 px anchors scaled x2): pairs of
    boxes at IoU ~1 on different levels, both with high scores; some other deltas shrink boxes
    below 6 px."""
    g = torch.Generator().manual_seed(seed)
    (h0, w0), (h1, w1) = [(-(-IMG[0] // s), -(-IMG[1] // s)) for s in (4, 8)]
    scores = [torch.randn(1, 1, h0, w0, generator=g) * 1.5,  # sigmoid below float32's 1.0
              torch.randn(1, 1, h1, w1, generator=g) * 1.5]
    deltas = [torch.randn(1, 4, h0, w0, generator=g) * 0.2,
              torch.randn(1, 4, h1, w1, generator=g) * 0.2]
    # level 0's anchor (16 px) at grid (2y, 2x) has the centre of level 1's (32 px) at (y, x):
    # dx = dy = 0, dw = dh = log 2 make it that anchor's box
    deltas[0][0, :2, ::2, ::2] = 0.0
    deltas[0][0, 2:, ::2, ::2] = float(torch.log(torch.tensor(2.0)))
    deltas[1][0, :, :, :] = 0.0  # level 1: the anchors themselves
    scores[0][0, 0, ::2, ::2] = 4.0 + torch.rand(h1, w1, generator=g)
    scores[1][0, 0] = 4.0 + torch.rand(h1, w1, generator=g)
    # tiny boxes (below min_bbox_size 6) with high scores, far from everything else
    deltas[0][0, 2:, 1::8, 1::8] = -2.5
    tiny = scores[0][0, 0, 1::8, 1::8]
    scores[0][0, 0, 1::8, 1::8] = 5.0 + torch.rand(tiny.shape, generator=g)  # no ties
    return scores, deltas


def _same_boxes(got, ref):
    """The same boxes and scores (x1 y1 x2 y2 score rows), in any order."""
    assert len(got) == len(ref), (len(got), len(ref))

    def ordered(rows):
        return torch.tensor(sorted(rows.tolist(), key=lambda r: (round(r[4], 5), *r[:4])))
    got, ref = ordered(got), ordered(ref)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


@pytest.mark.parametrize('min_bbox_size', [-1, 6])
def test_rpn_proposals_are_mmdets(min_bbox_size):
    head = _rpn_head()
    cfg = _rpn_cfg(min_bbox_size)
    scores, deltas = _rpn_inputs(0)
    metas = [dict(img_shape=IMG, scale_factor=(1.0, 1.0))]
    with torch.no_grad():
        ref = head.predict_by_feat(scores, deltas, batch_img_metas=metas, cfg=cfg,
                                   rescale=False)[0]
    with torch.no_grad(), _rewriting():
        got, _ = compat.rpn_head__predict_by_feat(head, scores, deltas, batch_img_metas=metas,
                                                  cfg=cfg)
    got = got[0][got[0, :, 4] >= 0]
    ref_boxes = torch.cat([ref.bboxes, ref.scores[:, None]], 1)
    _same_boxes(got, ref_boxes)
    # what the case rests on: cross-level twins that per-level NMS keeps both of, and, with
    # min_bbox_size, tiny boxes among the best-scored that mmdet drops
    overlap = bbox_overlaps(ref.bboxes, ref.bboxes)
    overlap.fill_diagonal_(0)
    assert (overlap > 0.9).sum() >= 10
    sides = (got[:, 2:4] - got[:, :2]).min(1).values
    if min_bbox_size > 0:
        assert (sides > min_bbox_size).all()
    else:
        assert (sides < 6).sum() >= 5


def _bbox_head(num_classes=4):
    head = _build(dict(
        type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16, roi_feat_size=2,
        num_classes=num_classes, reg_class_agnostic=False,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)))
    return head.eval()


def test_box_head_detections_are_mmdets():
    """Each class its own regressed box (the deltas differ per class: regressors scaled up),
    scores above score_thr, NMS per class, max_per_img: equal to mmdet's."""
    head = _bbox_head()
    g = torch.Generator().manual_seed(1)
    num = 60
    xy = torch.rand(num, 2, generator=g) * torch.tensor([110.0, 80.0])
    wh = 16 + torch.rand(num, 2, generator=g) * 30
    rois = torch.cat([torch.zeros(num, 1), xy, (xy + wh).clamp(max=torch.tensor([151., 119.]))],
                     1)
    cls_scores = torch.randn(num, 5, generator=g)
    bbox_preds = torch.randn(num, 16, generator=g) * 3  # large, class-specific deltas
    cfg = ConfigDict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
    metas = [dict(img_shape=IMG, scale_factor=(1.0, 1.0))]
    with torch.no_grad():
        ref = head.predict_by_feat((rois,), (cls_scores,), (bbox_preds,), metas,
                                   rcnn_test_cfg=cfg, rescale=False)[0]
    with torch.no_grad(), _rewriting():
        dets, labels = compat._detections(head, rois[None], cls_scores[None], bbox_preds[None],
                                          IMG, cfg)
    kept = dets[0, :, 4] > 0
    got = InstanceData(bboxes=dets[0, kept, :4], scores=dets[0, kept, 4],
                       labels=labels[0, kept])
    assert len(got) == len(ref) >= 20
    twins = match_detections(ref, got, iou=0.999, score=1e-6)
    assert (twins >= 0).all(), twins
    # what the case rests on: a RoI detected as two classes gets two different boxes
    boxes_of = {}
    for box, index in zip(ref.bboxes, _roi_of(ref, rois, head, bbox_preds)):
        boxes_of.setdefault(int(index), []).append(box)
    multi = [b for b in boxes_of.values() if len(b) > 1]
    assert multi and all(bbox_overlaps(torch.stack(b[:1]), torch.stack(b[1:])).max() < 0.99
                         for b in multi)


def _roi_of(ref, rois, head, bbox_preds):
    """Which RoI each of mmdet's detections came from (its box is that RoI's regression)."""
    boxes = head.bbox_coder.decode(rois[:, 1:].repeat_interleave(4, 0),
                                   bbox_preds.reshape(-1, 4), max_shape=IMG).reshape(-1, 4, 4)
    out = []
    for box, label in zip(ref.bboxes, ref.labels):
        out.append(int((boxes[:, label] - box).abs().sum(1).argmin()))
    return out


def _detections(boxes, scores, labels):
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(scores), labels=torch.tensor(labels))


def _grid_boxes(n):
    return [[40.0 * (i % 10), 40.0 * (i // 10), 40.0 * (i % 10) + 30, 40.0 * (i // 10) + 30]
            for i in range(n)]


def test_export_check_tolerances_as_the_tool_uses_them():
    """compare_detections with the tool's DETECTION_TOLERANCE: a twin at box IoU 0.995 passes,
    one at 0.985 (beyond 0.99) does not; one missing twin among mmdet's top 20 fails even when
    99 % of all detections have one; a score off by 2e-3 is no twin."""
    n = 100
    boxes = _grid_boxes(n)
    scores = [1.0 - 0.005 * i for i in range(n)]
    ref = _detections(boxes, scores, [i % 3 for i in range(n)])

    def shifted(index, iou):
        """Box ``index`` moved right so that its IoU with the original is ``iou``."""
        moved = [list(b) for b in boxes]
        width = 30.0
        dx = width * (1 - iou) / (1 + iou)
        moved[index][0] += dx
        moved[index][2] += dx
        return moved

    assert compare_detections(ref, ref, **DETECTION_TOLERANCE)['passed']
    near = _detections(shifted(5, 0.995), scores, ref.labels.tolist())
    assert compare_detections(ref, near, **DETECTION_TOLERANCE)['passed']
    far = _detections(shifted(5, 0.985), scores, ref.labels.tolist())
    figures = compare_detections(ref, far, **DETECTION_TOLERANCE)
    assert not figures['passed'] and figures['top'] == '19/20'
    assert figures['share'] == pytest.approx(0.99)
    late = _detections(shifted(50, 0.985), scores, ref.labels.tolist())  # outside the top 20
    assert compare_detections(ref, late, **DETECTION_TOLERANCE)['passed']
    off = list(scores)
    off[3] -= 2e-3
    assert not compare_detections(ref, _detections(boxes, off, ref.labels.tolist()),
                                  **DETECTION_TOLERANCE)['passed']


def test_mask_tolerance_as_the_tool_uses_it():
    """Twins' masks: IoU >= 0.99, or at most 2 pixels apart (one pixel near 0.5 flips between
    two correct fp32 runtimes; on a small mask that alone is below IoU 0.99): 2 flipped pixels
    of a 64-pixel mask pass, 3 do not; 13 of a 625-pixel mask (IoU 0.979) do not."""
    boxes = [[0.0, 0.0, 30.0, 30.0], [40.0, 0.0, 70.0, 30.0]]
    masks = torch.zeros(2, 40, 80, dtype=torch.bool)
    masks[0, :8, :8] = True  # 64 pixels
    masks[1, :25, 40:65] = True  # 625 pixels
    ref = InstanceData(bboxes=torch.tensor(boxes), scores=torch.tensor([0.9, 0.8]),
                       labels=torch.tensor([0, 1]), masks=masks)

    def flipped(index, count):
        other = masks.clone()
        rows, cols = masks[index].nonzero().T
        other[index, rows[:count], cols[:count]] = False
        return InstanceData(bboxes=ref.bboxes, scores=ref.scores, labels=ref.labels,
                            masks=other)
    assert compare_detections(ref, flipped(0, 2), **DETECTION_TOLERANCE)['passed']
    figures = compare_detections(ref, flipped(0, 3), **DETECTION_TOLERANCE)
    assert not figures['passed'] and figures['mask_pixels'] == 3
    assert compare_detections(ref, flipped(1, 6), **DETECTION_TOLERANCE)['passed']  # IoU 0.99
    assert not compare_detections(ref, flipped(1, 13), **DETECTION_TOLERANCE)['passed']
