"""mmef.export_check, what tools/deploy.py and the mmdeploy tests judge an export by, on cases
whose answers are known: twins need the label, box IoU and score all right, each detection of
the export is used once, and the pass / fail figures follow the stated tolerances."""
import pytest
import torch
from mmengine.structures import InstanceData, PixelData
from mmseg.structures import SegDataSample

from mmdet.structures.bbox import bbox_overlaps

from mmef.export_check import (compare_detections, compare_segmentation, match_detections,
                               pairwise_mask_iou)


def _dets(boxes, scores, labels, masks=None):
    data = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(scores), labels=torch.tensor(labels))
    if masks is not None:
        data.masks = masks
    return data


def test_box_iou():  # the IoU the twins are matched by: mmdet's, without the +1 of old
    a = torch.tensor([[0., 0., 10., 10.]])
    b = torch.tensor([[0., 0., 10., 10.], [5., 0., 15., 10.], [20., 20., 30., 30.]])
    assert torch.allclose(bbox_overlaps(a, b), torch.tensor([[1., 50 / 150, 0.]]))


def test_twins_need_label_box_and_score():
    box = [10., 10., 60., 80.]
    ref = _dets([box] * 4, [0.9, 0.8, 0.7, 0.6], [1, 2, 3, 4])
    got = _dets([[10.1, 10., 60., 80.],        # IoU 0.998: twin of 0
                 box,                          # label 5: no twin
                 [12., 10., 60., 80.],         # IoU 0.96: no twin
                 box],                         # score 0.6 + 2e-3: no twin
                [0.9005, 0.8, 0.7, 0.602], [1, 5, 3, 4])
    assert match_detections(ref, got).tolist() == [0, -1, -1, -1]
    figures = compare_detections(ref, got, top=2)
    assert figures['top'] == '1/2' and figures['share'] == 0.25 and not figures['passed']


def test_each_exported_detection_is_used_once():
    ref = _dets([[0., 0., 20., 20.]] * 2, [0.5, 0.5], [0, 0])
    got = _dets([[0., 0., 20., 20.]], [0.5], [0])
    assert match_detections(ref, got).tolist() == [0, -1]
    figures = compare_detections(ref, got)
    assert figures['share'] == 0.5 and figures['exported_share'] == 1.0 and not figures['passed']
    assert compare_detections(ref, _dets([[0., 0., 20., 20.]] * 2, [0.5, 0.5], [0, 0]))['passed']


def test_extra_exported_detections_fail():
    ref = _dets([[0., 0., 20., 20.]], [0.5], [0])
    got = _dets([[0., 0., 20., 20.], [30., 30., 50., 50.]], [0.5, 0.4], [0, 0])
    figures = compare_detections(ref, got)
    assert figures['top'] == '1/1' and figures['exported_share'] == 0.5
    assert not figures['passed']


def test_mask_iou_of_twins():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # the second is empty
    other = masks.clone()
    other[0, :4, :2] = False  # half of the first
    assert pairwise_mask_iou(masks, other).tolist() == [0.5, 1.0]  # empty and empty: equal
    boxes = [[0., 0., 20., 20.], [30., 30., 50., 50.]]
    ref = _dets(boxes, [0.5, 0.4], [0, 1], masks)
    figures = compare_detections(ref, _dets(boxes, [0.5, 0.4], [0, 1], other))
    assert figures['mask_iou'] == 0.5 and not figures['passed']
    assert compare_detections(ref, _dets(boxes, [0.5, 0.4], [0, 1], masks.clone()))['passed']


def test_no_detections_on_either_side_pass():
    empty = _dets(torch.zeros(0, 4).tolist(), [], [])
    assert compare_detections(empty, _dets(torch.zeros(0, 4).tolist(), [], []))['passed']
    assert not compare_detections(empty, _dets([[0., 0., 9., 9.]], [0.3], [0]))['passed']


def _seg(logits):
    sample = SegDataSample()
    sample.seg_logits = PixelData(data=logits)
    sample.pred_sem_seg = PixelData(data=logits.argmax(0, keepdim=True))
    return sample


def test_segmentation_figures():
    logits = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    scale = float(logits.abs().max())
    near = logits.clone()
    near[0, 0, 0] += 5e-5 * scale
    figures = compare_segmentation(_seg(logits), _seg(near))
    assert abs(figures['logits'] - 5e-5) < 1e-6 and figures['passed']
    far = logits.clone()
    far[:, :2] = -far[:, :2]  # two rows of 16: labels differ on most of 1/8 of the pixels
    figures = compare_segmentation(_seg(logits), _seg(far))
    assert figures['logits'] > 1 and figures['labels'] < 0.999 and not figures['passed']
    labels_only = SegDataSample()
    labels_only.pred_sem_seg = PixelData(data=logits.argmax(0, keepdim=True))
    figures = compare_segmentation(_seg(logits), labels_only)
    assert figures['logits'] is None and figures['labels'] == 1.0 and figures['passed']


def test_precision_tolerance_as_the_tool_uses_it():
    """tools/deploy.py --val: a drop of exactly the tolerance passes, just beyond fails; gains
    pass; every metric of the task counts."""
    from mmef.export_check import PRECISION_TOLERANCE, compare_metrics, metric_points
    ref = metric_points('mmdet', {'coco/bbox_mAP': 0.356, 'coco/segm_mAP': 0.393})
    assert ref == {'coco/bbox_mAP': pytest.approx(35.6), 'coco/segm_mAP': pytest.approx(39.3)}
    for precision, tol in PRECISION_TOLERANCE.items():
        at = {'coco/bbox_mAP': ref['coco/bbox_mAP'] - tol + 1e-9, 'coco/segm_mAP': 45.0}
        beyond = {'coco/bbox_mAP': 35.0, 'coco/segm_mAP': ref['coco/segm_mAP'] - tol - 0.01}
        assert compare_metrics(ref, at, precision)['passed'], precision
        assert not compare_metrics(ref, beyond, precision)['passed'], precision
    assert PRECISION_TOLERANCE == {'f32': 0.1, 'bf16': 0.5, 'int8': 1.0}  # the targets
    with pytest.raises(KeyError, match=r"gave no \['mIoU'\]"):
        metric_points('mmseg', {'aAcc': 90.0})
