"""Does an exported model give what mmdet / mmseg give? (``tools/deploy.py``; the tests).

Compares mmdeploy's inference path on the exported file (its backend model: test pipeline,
graph, post-processing on the original image) with mmdet's / mmseg's own inference API on the
same image and the same checkpoint:

* Detection: each of mmdet's detections is matched to at most one of the backend's, its twin:
  same label, box IoU above ``iou``, score within ``score``; masks of twins are compared by IoU.
  Passes when every one of mmdet's ``top`` best detections and at least ``share`` of all of
  them have a twin, at least ``share`` of the backend's detections are twins, and every twin's
  mask IoU is at least ``mask_iou`` or its masks differ in at most ``mask_pixels`` pixels (a
  pasted mask is probabilities thresholded at 0.5: a pixel within float noise of 0.5 flips
  between two correct fp32 runtimes, and on a 65-pixel mask one flip is IoU 0.985; measured
  with OpenVINO's f32 against mmdet).
* Segmentation: logits relative to their largest magnitude (when the graph outputs logits) and
  the share of pixels with the same label.
"""
import torch

DETECTION_TOLERANCE = dict(iou=0.99, score=1e-3, top=20, share=0.95, mask_iou=0.99,
                           mask_pixels=2)
SEGMENTATION_TOLERANCE = dict(logits=1e-4, labels=0.999)


def match_detections(ref, got, iou=0.99, score=1e-3):
    """Index into ``got`` of each of ``ref``'s detections' twin, -1 where it has none (both
    mmdet ``InstanceData`` with bboxes, scores, labels; ``ref`` in its order, each of ``got``'s
    detections used once, the closest box first)."""
    from mmdet.structures.bbox import bbox_overlaps
    twins = torch.full((len(ref),), -1, dtype=torch.long)
    if len(ref) == 0 or len(got) == 0:
        return twins
    overlap = bbox_overlaps(ref.bboxes.float(), got.bboxes.float())
    candidate = ((ref.labels[:, None] == got.labels[None]) & (overlap > iou)
                 & ((ref.scores[:, None] - got.scores[None]).abs() <= score))
    used = torch.zeros(len(got), dtype=torch.bool)
    for i in range(len(ref)):
        options = candidate[i] & ~used
        if options.any():
            j = int(torch.where(options, overlap[i], overlap.new_tensor(-1.0)).argmax())
            twins[i], used[j] = j, True
    return twins


def pairwise_mask_iou(a, b):
    """IoU of boolean masks ``a`` and ``b`` (K, H, W), pairwise: (K,); 1 where both are
    empty."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), 1.0)


def pairwise_mask_differences(a, b):
    """Pixels in which boolean masks ``a`` and ``b`` (K, H, W) differ, pairwise: (K,)."""
    return (a.bool().flatten(1) ^ b.bool().flatten(1)).sum(1)


def compare_detections(ref, got, iou=0.99, score=1e-3, top=20, share=0.95, mask_iou=0.99,
                       mask_pixels=2):
    """Figures of ``got`` (the backend's ``pred_instances``) against ``ref`` (mmdet's) and
    whether they pass (see the module docstring). Returns a dict."""
    twins = match_detections(ref, got, iou, score)
    found = twins >= 0
    head = found[:top]
    figures = dict(reference=len(ref), exported=len(got),
                   top=f'{int(head.sum())}/{len(head)}',
                   share=float(found.float().mean()) if len(ref) else 1.0,
                   exported_share=float(found.sum()) / len(got) if len(got) else 1.0,
                   mask_iou=None, mask_pixels=None)
    passed = bool(head.all()) and figures['share'] >= share and figures['exported_share'] >= share
    if 'masks' in ref and 'masks' in got and found.any():
        ref_masks, got_masks = ref.masks[found], got.masks[twins[found]]
        ious = pairwise_mask_iou(ref_masks, got_masks)
        differ = pairwise_mask_differences(ref_masks, got_masks)
        figures['mask_iou'] = float(ious.min())
        figures['mask_pixels'] = int(differ[ious < mask_iou].max()) if (ious < mask_iou).any() \
            else 0
        passed = passed and bool(((ious >= mask_iou) | (differ <= mask_pixels)).all())
    figures['passed'] = passed
    return figures


def compare_segmentation(ref, got, logits=1e-4, labels=0.999):
    """Figures of ``got`` (the backend's ``SegDataSample``) against ``ref`` (mmseg's): logits'
    relative error (where the graph gives logits) and label agreement. Returns a dict."""
    figures = dict(logits=None)
    if 'seg_logits' in got:
        ref_logits, got_logits = ref.seg_logits.data.float(), got.seg_logits.data.float()
        if ref_logits.shape != got_logits.shape:
            raise ValueError(f'logits of shape {tuple(got_logits.shape)}, mmseg gives '
                             f'{tuple(ref_logits.shape)}')
        scale = ref_logits.abs().max().clamp(min=1e-12)
        figures['logits'] = float((got_logits - ref_logits).abs().max() / scale)
    same = got.pred_sem_seg.data == ref.pred_sem_seg.data
    figures['labels'] = float(same.float().mean())
    figures['passed'] = (figures['labels'] >= labels
                         and (figures['logits'] is None or figures['logits'] <= logits))
    return figures


def check_export(deploy_cfg, model_cfg, checkpoint, image, backend_files, device='cpu'):
    """mmdeploy's backend model on ``backend_files`` against mmdet's / mmseg's inference API,
    both on ``image`` with ``checkpoint``: (task, figures) where task is 'detection' or
    'segmentation'. Configs are mmengine Configs; import mmef.mmdeploy_compat first."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import get_input_shape
    task = build_task_processor(model_cfg, deploy_cfg, device)
    inputs, _ = task.create_input(image, get_input_shape(deploy_cfg))  # static: resized to it
    backend = task.build_backend_model(list(backend_files), task.update_data_preprocessor)
    with torch.no_grad():
        got = backend.test_step(inputs)[0]
    reference_cfg = model_cfg.copy()
    if model_cfg.get('default_scope') == 'mmseg':
        from mmseg.apis import inference_model, init_model
        ref = inference_model(init_model(reference_cfg, checkpoint, device=device), image)
        return 'segmentation', compare_segmentation(ref, got, **SEGMENTATION_TOLERANCE)
    from mmdet.apis import inference_detector, init_detector
    ref = inference_detector(init_detector(reference_cfg, checkpoint, device=device), image)
    return 'detection', compare_detections(ref.pred_instances, got.pred_instances,
                                           **DETECTION_TOLERANCE)


def build_backend_runner(cfg, deploy_cfg, backend_files, device='cpu'):
    """A test runner of mmdeploy's (``task.build_test_runner``) that evaluates the exported
    ``backend_files`` through mmdeploy's backend model with the test dataloader and evaluator
    of ``cfg`` (an mmdet / mmseg Config with its work_dir set): the same metrics as the
    PyTorch model's ``tools/test.py`` run. Import mmef.mmdeploy_compat first."""
    from mmdeploy.apis.utils import build_task_processor
    task = build_task_processor(cfg, deploy_cfg, device)
    model = task.build_backend_model(list(backend_files), task.update_data_preprocessor)
    return task.build_test_runner(model, cfg.work_dir)



# --- Reduced precision: judged by the task's metric, not detection by detection ------------------
# A bf16 or INT8 model moves boxes and scores a little everywhere, so twins at IoU 0.99 are the
# wrong test; the metric on validation images is the right one. Figures in points (AP x 100,
# mIoU as mmseg reports it, in %); a reduced-precision model passes within these many points of
# fp32 in every metric of its task.
TASK_METRICS = {'mmdet': ('coco/bbox_mAP', 'coco/segm_mAP'), 'mmseg': ('mIoU',)}
PRECISION_TOLERANCE = {'f32': 0.1, 'bf16': 0.5, 'int8': 1.0}


def metric_points(scope, metrics):
    """The task's metrics (:data:`TASK_METRICS`) of a test run, in points."""
    scale = 100.0 if scope == 'mmdet' else 1.0
    missing = [key for key in TASK_METRICS[scope] if key not in metrics]
    if missing:
        raise KeyError(f'the test run gave no {missing} (it gave {sorted(metrics)}); the '
                       'config\'s test_evaluator must compute them')
    return {key: float(metrics[key]) * scale for key in TASK_METRICS[scope]}


def check_evaluable(deploy_cfg):
    """Raises ValueError for a static deploy config: mmdeploy resizes every image to its shape,
    unlike the model config's test pipeline, so the metric of its export is not the model's."""
    from mmdeploy.utils import get_input_shape, is_dynamic_shape
    if not is_dynamic_shape(deploy_cfg):
        width, height = get_input_shape(deploy_cfg)
        raise ValueError(
            f'a static deploy config ({height}x{width}) resizes every image to that shape, '
            'unlike the model config\'s test pipeline, so its metric is not the model\'s: '
            'evaluate an export made with a *_dynamic.py deploy config')


def evaluate(cfg, work_dir, num_images=None, checkpoint=None, deploy_cfg=None,
             backend_files=None):
    """The task's metrics in points on the first ``num_images`` images (all when None) of the
    config's test dataloader: of ``checkpoint`` (mmdet's / mmseg's PyTorch model) or of the
    exported ``backend_files`` through mmdeploy's backend model (``deploy_cfg``, dynamic:
    :func:`check_evaluable`). ``cfg`` is not modified. Import mmef.mmdeploy_compat first for
    exported files."""
    import copy

    from .engine import build_runner, check_dataset
    cfg = copy.deepcopy(cfg)  # Config.copy is shallow: the dataloader settings below are nested
    cfg.work_dir = work_dir
    if num_images:
        cfg.test_dataloader.dataset.indices = int(num_images)
    if backend_files:
        check_evaluable(deploy_cfg)
        runner = build_backend_runner(cfg, deploy_cfg, backend_files)
    else:
        cfg.load_from = checkpoint
        runner = build_runner(cfg)
    check_dataset(runner, 'test')
    return metric_points(cfg.default_scope, runner.test())


def compare_metrics(reference, got, precision):
    """Figures of ``got`` against ``reference`` (both from :func:`evaluate`): per metric the
    two values and the drop, passing when no drop exceeds :data:`PRECISION_TOLERANCE`."""
    tolerance = PRECISION_TOLERANCE[precision]
    rows = {key: dict(reference=reference[key], got=got[key], drop=reference[key] - got[key])
            for key in reference}
    return dict(rows=rows, tolerance=tolerance,
                passed=all(row['drop'] <= tolerance for row in rows.values()))
