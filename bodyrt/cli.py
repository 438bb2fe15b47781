"""The `bodyrt` command line: a thin shell over the Python API.

Heavy modules (torch for export, ONNX Runtime for running) are imported inside each command so that
`bodyrt --help` is instant and the runtime commands never load torch.
"""

import argparse
import logging
import sys

from bodyrt import __version__
from bodyrt.errors import BodyrtError, InputError


def _add_demo(commands):
    parser = commands.add_parser(
        "demo", help="generate synthetic models and an untrained checkpoint, export, run and time them")
    parser.add_argument("--out", default="bodyrt-demo", help="output directory (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per stage (default: %(default)s)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args):
    from bodyrt.export.demo import run_demo

    run_demo(out_dir=args.out, threads=args.threads)


def _add_run(commands):
    parser = commands.add_parser(
        "run", help="run images through an exported bundle, or through the PyTorch reference pipeline")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="exported bundle directory (torch-free runtime)")
    source.add_argument("--checkpoint", help="ExPose or bodyrt checkpoint (PyTorch reference pipeline)")
    parser.add_argument("--body-model", help="SMPL-X model file (SMPLX_NEUTRAL.npz or .pkl); with --checkpoint")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels; repeat for several people (applies to every image); "
                             "default: the whole image")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.set_defaults(handler=_run_images)


def _run_images(args):
    from bodyrt.run import run_images

    if args.checkpoint and not args.body_model:
        raise InputError("--checkpoint needs --body-model (the SMPL-X file the checkpoint was trained with)")
    run_images(args.images, out_dir=args.out, boxes=args.box, bundle=args.bundle,
               checkpoint=args.checkpoint, body_model=args.body_model, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bodyrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bodyrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_run(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="bodyrt: %(levelname)s: %(message)s")
    try:
        args.handler(args)
    except BodyrtError as error:
        print(f"bodyrt: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bodyrt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
