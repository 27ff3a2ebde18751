"""Run a trained model on images and write visualised predictions (mmdet or mmseg config).

Uses the public inference APIs: ``mmdet.apis.init_detector`` / ``inference_detector`` and
``mmseg.apis.init_model`` / ``inference_model``.

Example:
    python tools/infer.py CONFIG CKPT demo.jpg --out vis/demo_pred.jpg
    python tools/infer.py CONFIG CKPT a.jpg b.jpg --out-dir vis/
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import mmcv  # noqa: E402

from mmef.checkpoint import load_file  # noqa: E402
from mmef.engine import load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Visualise predictions of a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--out', help='output image path (one input image)')
    parser.add_argument('--out-dir', help='output folder (any number of images)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: hide boxes below this score')
    parser.add_argument('--opacity', type=float, default=0.5, help='segmentation overlay')
    args = parser.parse_args(argv)
    if (args.out is None) == (args.out_dir is None):
        parser.error('pass exactly one of --out (one image) or --out-dir')
    if args.out is not None and len(args.images) != 1:
        parser.error('--out takes one image; use --out-dir for several')
    return args


def build_model(config, checkpoint, device='cpu'):
    """(model, scope) through the task's public init API."""
    cfg, scope = load_config(config)
    load_file(checkpoint)  # clear errors for a missing, corrupt or unsafe file
    if scope == 'mmdet':
        from mmdet.apis import init_detector
        return init_detector(cfg, checkpoint, device=device), scope
    from mmseg.apis import init_model
    return init_model(cfg, checkpoint, device=device), scope


def predict(model, scope, image):
    """The data sample the task's public inference API returns for one image path."""
    if scope == 'mmdet':
        from mmdet.apis import inference_detector
        return inference_detector(model, image)
    from mmseg.apis import inference_model
    return inference_model(model, image)


def visualise(model, scope, image, result, out_file, score_thr=0.3, opacity=0.5):
    """Draws ``result`` over ``image`` and writes it to ``out_file``."""
    if scope == 'mmdet':
        from mmdet.visualization import DetLocalVisualizer as visualizer_cls
        kwargs = dict(pred_score_thr=score_thr)
    else:
        from mmseg.visualization import SegLocalVisualizer as visualizer_cls
        kwargs = dict(with_labels=True)
    # one visualizer per task and process (mmengine keeps them by name)
    vis = visualizer_cls.get_instance(f'mmef_infer_{scope}', alpha=opacity)
    vis.dataset_meta = model.dataset_meta
    img = mmcv.imread(image, channel_order='rgb')
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    vis.add_datasample('prediction', img, result, draw_gt=False, show=False,
                       out_file=out_file, **kwargs)
    return out_file


def main(argv=None):
    args = parse_args(argv)
    model, scope = build_model(args.config, args.checkpoint, args.device)
    written = []
    for image in args.images:
        if not osp.isfile(image):
            raise FileNotFoundError(f'image {image!r} does not exist')
        out = args.out or osp.join(args.out_dir, osp.basename(image))
        result = predict(model, scope, image)
        written.append(visualise(model, scope, image, result, out, args.score_thr,
                                 args.opacity))
        print(f'wrote {out}')
    return written


if __name__ == '__main__':
    main()
