"""Export an mmdet / mmseg model to ONNX Runtime with mmdeploy (the pip package has no deploy tool).

Imports mmef.mmdeploy_compat (what stock mmdeploy 1.3.1 needs on torch >= 2.9, registered through
mmdeploy's rewriter registries), then runs mmdeploy's ``torch2onnx``: the model is built from
MODEL_CONFIG and CHECKPOINT, its EfficientFormer backbone switched to deploy mode by mmdeploy
(``backbone.switch_to_deploy()``), traced on IMAGE and written to WORK_DIR/end2end.onnx. Deploy
configs for ONNX Runtime with dynamic shapes: configs/mmdeploy/.

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
    parser.add_argument('image', help='image to trace the model on')
    parser.add_argument('--work-dir', required=True, help='where end2end.onnx is written')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    for path in (args.deploy_config, args.model_config, args.checkpoint, args.image):
        if not osp.isfile(path):
            parser.error(f'{path!r} does not exist')
    return args


def main(argv=None):
    args = parse_args(argv)
    import mmef.mmdeploy_compat  # noqa: F401  (before mmdeploy traces anything)
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_onnx_config, load_config
    from mmef.checkpoint import load_file
    load_file(args.checkpoint)  # clear errors for a missing, corrupt or unsafe file
    deploy_cfg, model_cfg = load_config(args.deploy_config, args.model_config)
    model_cfg.model.backbone.pop('init_cfg', None)  # the checkpoint has all weights
    os.makedirs(args.work_dir, exist_ok=True)
    save_file = get_onnx_config(deploy_cfg)['save_file']
    torch2onnx(args.image, args.work_dir, save_file, deploy_cfg, model_cfg, args.checkpoint,
               args.device)
    path = osp.join(args.work_dir, save_file)
    print(f'wrote {path}')
    return path


if __name__ == '__main__':
    main()
