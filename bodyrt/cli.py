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


def _add_export(commands):
    parser = commands.add_parser("export", help="export a checkpoint to a bundle of ONNX graphs")
    parser.add_argument("--checkpoint", required=True, help="ExPose or bodyrt checkpoint")
    parser.add_argument("--body-model", required=True, help="SMPL-X model file (SMPLX_NEUTRAL.npz or .pkl)")
    parser.add_argument("--out", required=True, help="bundle directory to write (replaced only when complete)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.set_defaults(handler=_export)


def _export(args):
    from bodyrt.export.bundle import export_bundle

    path = export_bundle(args.checkpoint, args.body_model, args.out, threads=args.threads)
    print(f"bodyrt: wrote bundle {path}")


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


def _add_bench(commands):
    parser = commands.add_parser("bench", help="latency of runtime backends against the PyTorch reference")
    parser.add_argument("--bundle", help="exported bundle directory")
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference pipeline")
    parser.add_argument("--checkpoint", help="checkpoint for --reference")
    parser.add_argument("--body-model", help="SMPL-X file for --reference")
    parser.add_argument("--backend", action="append", help="runtime backend; repeat for several "
                        "(default: onnxruntime)")
    parser.add_argument("--persons", type=int, default=1, help="persons per image (default: %(default)s)")
    parser.add_argument("--image-size", default="720p", help="720p, 1080p or 4k (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="write the full report (every sample) to this file")
    parser.set_defaults(handler=_bench)


def _bench(args):
    from bodyrt.bench import run_bench

    reference_files = None
    if args.reference:
        if not (args.checkpoint and args.body_model):
            raise InputError("--reference needs --checkpoint and --body-model")
        reference_files = (args.checkpoint, args.body_model)
    run_bench(bundle=args.bundle, backends=args.backend or ["onnxruntime"], reference_files=reference_files,
              persons=args.persons, image_size=args.image_size, threads=args.threads, repeats=args.repeats,
              warmup=args.warmup, memory=not args.no_memory, json_path=args.json)


def _add_build_capi(commands):
    parser = commands.add_parser(
        "build-capi", help="build libbodyrt.so (the runtime for C programs), bodyrt.h and an example")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(handler=_build_capi)


def _build_capi(args):
    from bodyrt.runtime.capi.build import build_library, compile_command

    paths = build_library(args.out)
    for what, path in paths.items():
        print(f"bodyrt: wrote {what.replace('_', ' ')} {path}")
    command = compile_command("program.c", "program", paths["library"].parent)
    print(f"bodyrt: compile a program with: {' '.join(command)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bodyrt", description="Export and run whole-body (body, hands, face) mesh regressors.")
    parser.add_argument("--version", action="version", version=f"bodyrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_export(commands)
    _add_run(commands)
    _add_bench(commands)
    _add_build_capi(commands)
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
