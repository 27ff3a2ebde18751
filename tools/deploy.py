"""Export an mmdet / mmseg model to ONNX Runtime or OpenVINO with mmdeploy (the pip package has no
deploy tool) and check what was written against mmdet's / mmseg's own inference.

Imports mmef.mmdeploy_compat (what stock mmdeploy 1.3.1 needs on torch >= 2.9, and mmdet's
post-processing for two-stage detectors, registered through mmdeploy's rewriter registries),
then runs mmdeploy's ``torch2onnx``: the model is built from MODEL_CONFIG and CHECKPOINT, its
EfficientFormer backbone switched to deploy mode by mmdeploy (``backbone.switch_to_deploy()``),
traced on IMAGE and written to WORK_DIR/end2end.onnx. Then mmdeploy's backend model runs the file
on IMAGE and is compared with mmdet's / mmseg's inference API (mmef.export_check): detections
matched one to one (same label, box IoU > 0.99, score within 1e-3: all of mmdet's top 20 and 95 %
of all of them, masks IoU >= 0.99), or logits (1e-4 relative) and labels (99.9 %). Exits 1 beyond
tolerance (``--no-check`` skips the check). Deploy configs: configs/mmdeploy/.

OpenVINO deploy configs (``*_openvino*_dynamic.py``) convert that ONNX file to OpenVINO's IR
(WORK_DIR/end2end.xml and .bin) in f32, bf16 or INT8 (``backend_config.precision``). INT8 is
calibrated on ``--calib N`` images of the model config's training set (written to
WORK_DIR/calib_data.npz first). f32 gets the check above; bf16 and INT8 are judged by the task's
metric instead: ``--val N`` (default 50 for them) evaluates mmdet's / mmseg's PyTorch model and
the export on the first N images of the config's test dataloader and exits 1 when the export
loses more than 0.5 (bf16) or 1.0 (INT8) points of box / mask AP or mIoU
(mmef.export_check.PRECISION_TOLERANCE). ``--sensitivity`` (INT8) evaluates the model once with
each part of it (or each part named after it) kept in float and prints the table, to choose the
deploy config's keep_float.

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
    parser.add_argument('--val', type=int, default=None, metavar='N',
                        help='evaluate PyTorch and the export on the first N test images and '
                             'compare the metrics (default: 50 for bf16 / INT8, 0 for fp32)')
    parser.add_argument('--calib', type=int, default=None, metavar='N',
                        help='INT8: calibration images from the training set (default: the '
                             "deploy config's calib_config.num_images)")
    parser.add_argument('--sensitivity', nargs='*', default=None, metavar='PART',
                        help='INT8: the metric with each part of the model kept in float (or '
                             'only the PARTs named, e.g. backbone/stem conv_seg: a big model\'s '
                             'rows each cost an evaluation)')
    args = parser.parse_args(argv)
    for name in ('val', 'calib'):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f'--{name} must be >= 0')
    if args.calib == 0:
        parser.error('--calib 0: INT8 needs calibration images (the default is the deploy '
                     "config's calib_config.num_images)")
    for path in (args.deploy_config, args.model_config, args.checkpoint, args.image):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    return args


def _format(task, figures, name='onnxruntime'):
    if task == 'segmentation':
        logits = ('not compared (the graph outputs labels)' if figures['logits'] is None else
                  f"{figures['logits']:.2e} relative")
        return f"logits {logits}; labels agree on {figures['labels']:.2%} of pixels"
    masks = ('' if figures['mask_iou'] is None else
             f"; mask IoU of twins >= {figures['mask_iou']:.4f}" +
             (f" (below 0.99: masks differing in at most {figures['mask_pixels']} pixels)"
              if figures['mask_pixels'] else ''))
    return (f"mmdet {figures['reference']} detections, {name} {figures['exported']}; "
            f"twins of mmdet's top 20: {figures['top']}, of all: {figures['share']:.1%}, "
            f"of {name}'s: {figures['exported_share']:.1%}{masks}")


def _format_metrics(figures, name):
    rows = [f"{key} {row['reference']:.2f} -> {row['got']:.2f} ({-row['drop']:+.2f})"
            for key, row in figures['rows'].items()]
    return (f"PyTorch fp32 -> {name}: {'; '.join(rows)} (points; tolerance "
            f"{figures['tolerance']} drop: {'met' if figures['passed'] else 'NOT met'})")


def _convert(args, deploy_cfg, model_cfg, onnx_file, precision):
    """The ONNX file as the deploy config's backend files (OpenVINO: the IR, calibrated first
    for INT8); ONNX Runtime runs the ONNX file itself."""
    from mmdeploy.apis.utils import to_backend
    from mmdeploy.utils import get_backend
    import mmef.mmdeploy_compat as compat
    backend = get_backend(deploy_cfg).value
    if backend != 'openvino':
        return [onnx_file]
    if precision == 'int8':
        calib = deploy_cfg.get('calib_config') or {}
        inputs = compat.calibration_inputs(model_cfg, deploy_cfg,
                                           args.calib or calib.get('num_images', 300),
                                           args.device)
        path = compat.write_calibration(compat.calibration_path(deploy_cfg, args.work_dir),
                                        inputs)
        print(f'wrote {path}: {len(inputs)} calibration inputs from the training set')
    files = to_backend(backend, [onnx_file], args.work_dir, deploy_cfg, device=args.device)
    print(f'wrote {files[0]} (OpenVINO {precision})')
    return files


def _quantizers(xml):
    """FakeQuantize operations of an OpenVINO IR: one per quantized layer's input (NNCF stores
    the weights as int8 constants)."""
    from mmef.runtimes import import_openvino
    return sum(op.get_type_name() == 'FakeQuantize'
               for op in import_openvino().Core().read_model(xml).get_ops())


def _sensitivity_parts(args, onnx_file):
    """{name: keep_float pattern} of the parts ``--sensitivity`` evaluates (all the model's, or
    those named); exits naming the model's parts when a name is not one of them."""
    import mmef.mmdeploy_compat as compat
    parts = compat.model_parts(onnx_file)
    unknown = [name for name in args.sensitivity if name not in parts]
    if unknown:
        sys.exit(f'--sensitivity: {", ".join(unknown)}: not a part of this model; its parts: '
                 f'{", ".join(parts)}')
    named = {name: parts[name] for name in parts if name in args.sensitivity}
    print(f'parts of the model: {", ".join(parts)}; the sensitivity keeps in float '
          f'{"each of them" if not named else ", ".join(named)}')
    return named or parts


def _sensitivity(parts, deploy_cfg, model_cfg, onnx_file, num_images, reference, int8,
                 work_dir):
    """INT8: the task's metric with each of ``parts`` ({name: keep_float pattern}, from
    :func:`_sensitivity_parts`) kept in float and the rest quantized, next to PyTorch's
    (``reference``) and all-INT8's (``int8``: (IR file, metrics)); prints the table."""
    import copy

    import mmef.mmdeploy_compat as compat
    from mmef.export_check import evaluate
    from mmef.runtimes import openvino_model
    work = osp.join(work_dir, 'sensitivity')
    calib_file = osp.abspath(compat.calibration_path(deploy_cfg, work_dir))
    rows = [('nothing (PyTorch fp32)', None, reference),
            ('nothing (all INT8)', _quantizers(int8[0]), int8[1])]
    model = openvino_model(onnx_file)  # converted once, quantized once per part
    for name, pattern in parts.items():
        cfg = copy.deepcopy(deploy_cfg)  # each part alone: the patterns must not accumulate
        cfg.backend_config.keep_float = list(cfg.backend_config.get('keep_float', [])) + [pattern]
        cfg.calib_config = dict(cfg.get('calib_config') or {}, calib_file=calib_file)
        part_dir = osp.join(work, name.replace('/', '_'))
        os.makedirs(part_dir, exist_ok=True)
        xml = compat.write_openvino_ir(model, onnx_file, cfg, part_dir)
        rows.append((name, _quantizers(xml),
                     evaluate(model_cfg, part_dir, num_images, deploy_cfg=cfg,
                              backend_files=[xml])))
    keys = list(reference)
    print(f'INT8 sensitivity on the first {num_images} test images (points; each row: that '
          'part kept in float, the rest INT8):')
    print('| kept in float | FakeQuantize ops | ' + ' | '.join(keys) + ' |')
    print('|---|---|' + '---|' * len(keys))
    for name, quantizers, metrics in rows:
        print(f'| {name} | {"-" if quantizers is None else quantizers} | ' +
              ' | '.join(f'{metrics[k]:.2f}' for k in keys) + ' |')
    return rows


def main(argv=None):
    """Exports; returns the path of the exported file (the ONNX file, or OpenVINO's IR).
    Exits 1 when the check fails."""
    args = parse_args(argv)
    import mmef.mmdeploy_compat as compat  # before mmdeploy traces anything
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import (get_backend, get_input_shape, get_onnx_config,
                                is_dynamic_shape, load_config)
    from mmef import runtimes
    from mmef.checkpoint import load_file
    from mmef.export_check import check_evaluable, check_export, compare_metrics, evaluate
    load_file(args.checkpoint)  # clear errors for a missing, corrupt or unsafe file
    deploy_cfg, model_cfg = load_config(args.deploy_config, args.model_config)
    backend = get_backend(deploy_cfg).value
    precision = compat.openvino_precision(deploy_cfg) if backend == 'openvino' else 'f32'
    try:
        if backend == 'openvino':
            runtimes.check_openvino(precision)  # before anything is exported
    except (runtimes.RuntimeUnavailable, ValueError) as e:
        sys.exit(f'{args.deploy_config}: {e}')
    if args.sensitivity is not None and precision != 'int8':
        sys.exit('--sensitivity ranks the parts of an INT8 model: give an *_openvino-int8_* '
                 'deploy config')
    num_val = args.val if args.val is not None else (50 if precision != 'f32' else 0)
    if args.sensitivity is not None and not num_val:
        sys.exit('--sensitivity evaluates on the test images: give --val N (N > 0)')
    if num_val:
        try:
            check_evaluable(deploy_cfg)
        except ValueError as e:
            sys.exit(f'--val: {args.deploy_config}: {e}')
    model_cfg.model.backbone.pop('init_cfg', None)  # the checkpoint has all weights
    os.makedirs(args.work_dir, exist_ok=True)
    save_file = get_onnx_config(deploy_cfg)['save_file']
    path = osp.join(args.work_dir, save_file)
    with compat.quiet_registry_fallback():
        torch2onnx(args.image, args.work_dir, save_file, deploy_cfg, model_cfg,
                   args.checkpoint, args.device)
        print(f'wrote {path}')
        if args.sensitivity is not None:
            parts = _sensitivity_parts(args, path)  # a misspelt part: before any conversion
        files = _convert(args, deploy_cfg, model_cfg, path, precision)
        name = backend if backend != 'openvino' else f'openvino {precision}'
        failed = []
        if not args.no_check and precision == 'f32':
            task, figures = check_export(deploy_cfg, model_cfg, args.checkpoint, args.image,
                                         files, args.device)
            print(f'check on {args.image}: {_format(task, figures, name)}')
            if not figures['passed']:
                hint = ''
                if not is_dynamic_shape(deploy_cfg):
                    width, height = get_input_shape(deploy_cfg)
                    hint = (f' The deploy config has a static input shape ({height}x{width}): '
                            'mmdeploy resizes every image to it, mmdet / mmseg keep the aspect '
                            'ratio; pass --no-check for static exports.')
                failed.append(f'the exported {task} model does not give what mmdet / mmseg '
                              f'give (tolerances: mmef/export_check.py).{hint}')
        elif precision != 'f32' and not num_val:
            print(f'{precision} accuracy not checked (--val 0)')
        if num_val:
            work = osp.join(args.work_dir, 'val')
            reference = evaluate(model_cfg, osp.join(work, 'pytorch'), num_val, args.checkpoint)
            exported = evaluate(model_cfg, osp.join(work, 'export'), num_val,
                                deploy_cfg=deploy_cfg, backend_files=files)
            figures = compare_metrics(reference, exported, precision)
            print(f'metrics on the first {num_val} test images: {_format_metrics(figures, name)}')
            if not figures['passed']:
                failed.append(f'the {name} model loses more than {figures["tolerance"]} points '
                              'of its task\'s metric')
            if args.sensitivity is not None:
                _sensitivity(parts, deploy_cfg, model_cfg, path, num_val, reference,
                             (files[0], exported), args.work_dir)
    if failed:
        print(' '.join(failed) + f' {files[0]} is kept for inspection.', file=sys.stderr)
        sys.exit(1)
    return files[0]


if __name__ == '__main__':
    main()
