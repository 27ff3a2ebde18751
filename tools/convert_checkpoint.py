"""Convert an EfficientFormer checkpoint (original, timm, mmpretrain or mmef) to an mmef file.

    python tools/convert_checkpoint.py SRC DST [--force]

Prints what was mapped, dropped (with the reason) and left over, the backbone setting the file
needs and the sha256 of DST. Exits with status 1 and a one-line message on bad input.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from mmef.checkpoint.convert import convert_checkpoint, format_summary  # noqa: E402
from mmef.checkpoint.io import CheckpointError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert (.pth)')
    parser.add_argument('dst', help='output file (not overwritten unless --force)')
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        summary = convert_checkpoint(args.src, args.dst, force=args.force)
    except (CheckpointError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
