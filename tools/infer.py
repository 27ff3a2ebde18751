"""Run a trained model on images and write visualised predictions (mmdet or mmseg config).

Uses mmdet's ``DetInferencer`` / mmseg's ``MMSegInferencer`` (see ``mmef.engine.build_inferencer``).

Example:
    python tools/infer.py CONFIG CKPT demo.jpg --out vis/demo_pred.jpg
    python tools/infer.py CONFIG CKPT a.jpg b.jpg --out-dir vis/
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmef.engine import build_inferencer, draw_prediction  # noqa: E402


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


def main(argv=None):
    args = parse_args(argv)
    for image in args.images:
        if not osp.isfile(image):
            raise FileNotFoundError(f'image {image!r} does not exist')
    inferencer, scope = build_inferencer(args.config, args.checkpoint, args.device)
    written = []
    for image in args.images:
        out = args.out or osp.join(args.out_dir, osp.basename(image))
        written.append(draw_prediction(inferencer, scope, image, out, args.score_thr,
                                       args.opacity))
        print(f'wrote {out}')
    return written


if __name__ == '__main__':
    main()
