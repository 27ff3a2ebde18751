"""Export an mmdet / mmseg model to ONNX Runtime with mmdeploy (the pip package has no deploy tool)
and check what was written against mmdet's / mmseg's own inference.

Imports mmef.mmdeploy_compat (what stock mmdeploy 1.3.1 needs on torch >= 2.9, and mmdet's
post-processing for two-stage detectors, registered through mmdeploy's rewriter registries),
then runs mmdeploy's ``torch2onnx``: the model is built from MODEL_CONFIG and CHECKPOINT, its
EfficientFormer backbone switched to deploy mode by mmdeploy (``backbone.switch_to_deploy()``),
traced on IMAGE and written to WORK_DIR/end2end.onnx. Then mmdeploy's backend model runs the file
on IMAGE and is compared with mmdet's / mmseg's inference API (mmef.export_check): detections
matched one to one (same label, box IoU > 0.99, score within 1e-3: all of mmdet's top 20 and 95 %
of all of them, masks IoU >= 0.99), or logits (1e-4 relative) and labels (99.9 %). Exits 1 beyond
tolerance (``--no-check`` skips the check). Deploy configs for ONNX Runtime: configs/mmdeploy/.

Example:
    python tools/deploy.py configs/mmdeploy/segmentation_onnxruntime_dynamic.py \\
        configs/semantic_fpn/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py \\
        work_dirs/fpn_l1/iter_40000.pth demo.jpg --work-dir work_dirs/fpn_l1_onnx
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('deploy_config', help='mmdeploy config, e.g. configs/mmdeploy/...')
    parser.add_argument('model_config', help='mmdet / mmseg model config')
    parser.add_argument('checkpoint', help='model checkpoint')
    parser.add_argument('image', help='image to trace the model on and to check it with')
    parser.add_argument('--work-dir', required=True, help='where end2end.onnx is written')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--no-check', action='store_true',
                        help='do not compare the exported model with mmdet / mmseg')
    args = parser.parse_args(argv)
    for path in (args.deploy_config, args.model_config, args.checkpoint, args.image):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    return args


def _format(task, figures):
    if task == 'segmentation':
        logits = ('not compared (the graph outputs labels)' if figures['logits'] is None else
                  f"{figures['logits']:.2e} relative")
        return f"logits {logits}; labels agree on {figures['labels']:.2%} of pixels"
    masks = ('' if figures['mask_iou'] is None else
             f"; mask IoU of twins >= {figures['mask_iou']:.4f}")
    return (f"mmdet {figures['reference']} detections, onnxruntime {figures['exported']}; "
            f"twins of mmdet's top 20: {figures['top']}, of all: {figures['share']:.1%}, "
            f"of onnxruntime's: {figures['exported_share']:.1%}{masks}")


def main(argv=None):
    """Exports; returns the path of the ONNX file. Exits 1 when the check fails."""
    args = parse_args(argv)
    import mmef.mmdeploy_compat as compat  # before mmdeploy traces anything
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_input_shape, get_onnx_config, is_dynamic_shape, load_config
    from mmef.checkpoint import load_file
    from mmef.export_check import check_export
    load_file(args.checkpoint)  # clear errors for a missing, corrupt or unsafe file
    deploy_cfg, model_cfg = load_config(args.deploy_config, args.model_config)
    model_cfg.model.backbone.pop('init_cfg', None)  # the checkpoint has all weights
    os.makedirs(args.work_dir, exist_ok=True)
    save_file = get_onnx_config(deploy_cfg)['save_file']
    path = osp.join(args.work_dir, save_file)
    with compat.quiet_registry_fallback():
        torch2onnx(args.image, args.work_dir, save_file, deploy_cfg, model_cfg,
                   args.checkpoint, args.device)
        print(f'wrote {path}')
        if args.no_check:
            return path
        task, figures = check_export(deploy_cfg, model_cfg, args.checkpoint, args.image,
                                     [path], args.device)
    print(f'check on {args.image}: {_format(task, figures)}')
    if not figures['passed']:
        hint = ''
        if not is_dynamic_shape(deploy_cfg):
            width, height = get_input_shape(deploy_cfg)
            hint = (f' The deploy config has a static input shape ({height}x{width}): mmdeploy '
                    'resizes every image to it, mmdet / mmseg keep the aspect ratio; pass '
                    '--no-check for static exports.')
        print(f'the exported {task} model does not give what mmdet / mmseg give (tolerances: '
              f'mmef/export_check.py); {path} is kept for inspection.{hint}', file=sys.stderr)
        sys.exit(1)
    return path


if __name__ == '__main__':
    main()
