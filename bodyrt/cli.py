"""The `bodyrt` command line: a thin shell over the Python API.

Heavy modules (torch for export, ONNX Runtime for running) are imported inside each command so that
`bodyrt --help` is instant and the runtime commands never load torch.
"""

import argparse
import logging
import signal
import sys

from bodyrt import __version__
from bodyrt.errors import BodyrtError, InputError
from bodyrt.runtime.manifest import PRECISIONS
from bodyrt.limits import check_threads, default_threads


def thread_count(text: str) -> int:
    """--threads: a whole number from 1 to this machine's CPU count."""
    try:
        return check_threads(int(text), "--threads")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--threads ")) from None


def _add_threads(parser, what: str = "CPU threads") -> None:
    parser.add_argument("--threads", type=thread_count, default=default_threads(),
                        help=f"{what}, 1 to this machine's CPU count (default: %(default)s)")


def _add_demo(commands):
    parser = commands.add_parser(
        "demo", help="generate synthetic models and an untrained checkpoint, export, run and time them")
    parser.add_argument("--out", default="bodyrt-demo", help="output directory (default: %(default)s)")
    _add_threads(parser, "CPU threads per stage")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args):
    from bodyrt.export.demo import run_demo

    run_demo(out_dir=args.out, threads=args.threads)


def _add_export(commands):
    parser = commands.add_parser("export", help="export a checkpoint to a bundle of ONNX graphs")
    parser.add_argument("--checkpoint", required=True, help="ExPose or bodyrt checkpoint")
    parser.add_argument("--body-model", required=True, help="SMPL-X model file (SMPLX_NEUTRAL.npz or .pkl); "
                        "SMPL (SMPL_NEUTRAL.pkl) for --arch hkmr or deform-and-learn")
    parser.add_argument("--arch", choices=["expose", "hkmr", "deform-and-learn"], default="expose",
                        help="architecture of the checkpoint (default: %(default)s)")
    parser.add_argument("--out", required=True, help="bundle directory to write (replaced only when complete)")
    _add_threads(parser)
    parser.add_argument("--engine", choices=["onnx", "tensorrt"], default="onnx",
                        help="tensorrt: also build TensorRT engines for this machine's GPU (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="precision of the GPU graphs and engines (fp32 or fp16); the CPU graphs stay fp32, "
                             "bf16 is chosen at run time, int8 by bodyrt quantize (default: %(default)s)")
    parser.set_defaults(handler=_export)


def _export(args):
    from bodyrt.export.bundle import export_bundle
    from bodyrt.export.tensorrt import build_gpu_artefacts, check_gpu_export

    check_gpu_export(args.engine, args.precision)  # a missing TensorRT or GPU fails before the slow export
    path = export_bundle(args.checkpoint, args.body_model, args.out, threads=args.threads, arch=args.arch)
    if (args.engine, args.precision) != ("onnx", "fp32"):
        build_gpu_artefacts(path, args.engine, args.precision)
    print(f"bodyrt: wrote bundle {path}")


def _add_run(commands):
    parser = commands.add_parser(
        "run", help="run images through an exported bundle, or through the PyTorch reference pipeline")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="JPEG or PNG files, folders (their JPEG and PNG files, recursively) or quoted glob "
                             "patterns ('photos/**/*.jpg')")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="exported bundle directory (torch-free runtime)")
    source.add_argument("--checkpoint", help="ExPose or bodyrt checkpoint (PyTorch reference pipeline)")
    parser.add_argument("--body-model", help="SMPL-X model file (SMPLX_NEUTRAL.npz or .pkl); with --checkpoint")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels; repeat for several people (applies to every image); "
                             "default: the whole image")
    parser.add_argument("--boxes", metavar="JSON", help="per-image person boxes: {image: [[x0, y0, x1, y1], ...]} "
                        "or COCO detections (bbox x, y, width, height; category 1)")
    parser.add_argument("--min-score", type=float, default=0.5,
                        help="drop COCO detections scoring below this (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output directory (one folder per image, mirroring the "
                        "inputs' folders, and one summary-<run id>.json per run)")
    parser.add_argument("--coords", choices=["yup", "camera"], default="yup",
                        help="axes of the PLY and OBJ meshes, placed in the scene: yup (x right, y up, the camera "
                             "looking down -z: Blender, MeshLab, three.js) or camera (x right, y down, z forward: "
                             "OpenCV, params.npz) (default: %(default)s)")
    parser.add_argument("--overlay", choices=["on", "off"], default="on",
                        help="write overlay.png per image (default: %(default)s)")
    _add_threads(parser)
    parser.add_argument("--backend", default="onnxruntime", help="runtime backend for --bundle: onnxruntime, "
                        "openvino, or on a GPU tensorrt or cuda (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (parity with the reference), bf16 (openvino, CPUs with native bf16), "
                             "int8 (needs `bodyrt quantize` first) or fp16 (a GPU backend on a bundle exported "
                             "with --precision fp16) (default: %(default)s)")
    parser.set_defaults(handler=_run_images)


def _run_images(args):
    from bodyrt.run import run_images

    if args.checkpoint and not args.body_model:
        raise InputError("--checkpoint needs --body-model (the SMPL-X file the checkpoint was trained with)")
    if args.checkpoint and (args.backend, args.precision) != ("onnxruntime", "fp32"):
        raise InputError("--backend and --precision apply to --bundle; the --checkpoint reference runs PyTorch fp32")
    run_images(args.images, out_dir=args.out, boxes=args.box, bundle=args.bundle,
               checkpoint=args.checkpoint, body_model=args.body_model, threads=args.threads,
               backend=args.backend, precision=args.precision, boxes_file=args.boxes, min_score=args.min_score,
               coords=args.coords, overlay=args.overlay == "on")


def _add_bench(commands):
    parser = commands.add_parser("bench", help="latency of runtime backends against the PyTorch reference")
    parser.add_argument("--bundle", help="exported bundle directory")
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference pipeline")
    parser.add_argument("--checkpoint", help="checkpoint for --reference")
    parser.add_argument("--body-model", help="SMPL-X file for --reference")
    parser.add_argument("--backend", action="append", help="runtime backend; repeat for several "
                        "(default: onnxruntime)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="precision; repeat for several, each backend runs each it supports "
                             "(default: fp32)")
    parser.add_argument("--persons", type=int, default=1, help="persons per image (default: %(default)s)")
    parser.add_argument("--image-size", default="720p", help="720p, 1080p or 4k (default: %(default)s)")
    _add_threads(parser)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-roofline", action="store_true",
                        help="skip counting each stage's operations and measuring the CPU's peaks")
    parser.add_argument("--contention", action="store_true",
                        help="run again with another process busy on one core and report each slowdown")
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
              precisions=args.precision or ["fp32"],
              persons=args.persons, image_size=args.image_size, threads=args.threads, repeats=args.repeats,
              warmup=args.warmup, memory=not args.no_memory, json_path=args.json,
              roofline=not args.no_roofline, contention=args.contention)


def _add_quantize(commands):
    parser = commands.add_parser("quantize", help="add an int8 variant to a bundle, calibrated on your images")
    parser.add_argument("--bundle", required=True, help="exported bundle directory (gains the int8 variant)")
    parser.add_argument("--calibration", required=True, metavar="FOLDER",
                        help="folder of JPEG/PNG photos, one person each, framed around the person")
    parser.add_argument("--max-images", type=int, default=100, help="use at most this many (default: %(default)s)")
    _add_threads(parser)
    parser.set_defaults(handler=_quantize)


def _quantize(args):
    from bodyrt.export.quantize import quantize_bundle

    variant = quantize_bundle(args.bundle, args.calibration, threads=args.threads, max_images=args.max_images)
    print(f"bodyrt: added the int8 variant ({', '.join(variant['stages'].values())}) to {args.bundle}, "
          f"calibrated on {variant['calibration']['images']} image(s); check it with bodyrt compare")


def _add_compare(commands):
    parser = commands.add_parser(
        "compare", help="vertex deviation from fp32 and latency of each precision, on your images")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="JPEG or PNG files (default: 3 synthetic 720p images)")
    parser.add_argument("--bundle", required=True, help="exported bundle directory")
    parser.add_argument("--backend", default="openvino", help="runtime backend (default: %(default)s)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="precision to compare with fp32; repeat (default: bf16 and int8)")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels, for every image; repeat for several (default: whole image)")
    _add_threads(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the images (default: %(default)s)")
    parser.add_argument("--json", help="write the report to this file")
    parser.set_defaults(handler=_compare)


def _compare(args):
    from bodyrt.compare import compare_precisions, scenes_from_images, synthetic_scenes

    scenes = scenes_from_images(args.images, args.box) if args.images else synthetic_scenes()
    compare_precisions(args.bundle, scenes, backend=args.backend, precisions=args.precision or ["bf16", "int8"],
                       threads=args.threads, repeats=args.repeats, json_path=args.json)


def _add_convert(commands):
    parser = commands.add_parser("convert", help="convert body-model fits between models")
    conversions = parser.add_subparsers(dest="conversion", required=True, metavar="CONVERSION")
    smpl = conversions.add_parser(
        "smpl-to-smplx", help="fit SMPL-X (pose, shape, expression, translation) to SMPL meshes or parameters")
    smpl.add_argument("input", metavar="INPUT", help=".npz with SMPL 'vertices' (N, 6890, 3), or SMPL parameters "
                      "('betas', 'global_orient', 'body_pose' axis-angle, optional 'transl')")
    smpl.add_argument("--correspondence", required=True,
                      help="SMPL -> SMPL-X correspondence: the SMPL-X transfer_model tool's "
                           "smpl2smplx_deftrafo_setup.pkl, or bodyrt's .npz (triangle, triangle_vertices, "
                           "barycentric, valid)")
    smpl.add_argument("--smplx-model", required=True, help="SMPL-X model file to fit")
    smpl.add_argument("--smpl-model", help="SMPL model file; needed when INPUT holds parameters")
    smpl.add_argument("--out", required=True, help=".npz to write, one row per input body")
    smpl.add_argument("--batch-size", type=int, default=16, help="fits optimised together (default: %(default)s)")
    _add_threads(smpl)
    smpl.set_defaults(handler=_convert_smpl_to_smplx)


def _convert_smpl_to_smplx(args):
    from bodyrt.export.convert import FitSettings, convert_file

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    path = convert_file(args.input, args.correspondence, args.smplx_model, args.out, smpl_model=args.smpl_model,
                        settings=FitSettings(batch_size=args.batch_size), threads=args.threads)
    print(f"bodyrt: wrote SMPL-X fits {path}")


def _add_check(commands):
    parser = commands.add_parser(
        "check", help="compare every stage of a bundle on each backend and precision here against ONNX Runtime "
                      "fp32 (Polygraphy's comparator); exits 1 where an output diverges")
    parser.add_argument("--bundle", required=True, help="exported bundle directory")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="JPEG or PNG files to take the stage inputs from (default: 3 synthetic 720p scenes)")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels; repeat for several people (default: the whole image)")
    parser.add_argument("--atol", type=float, help="absolute tolerance for every precision (default: per precision)")
    parser.add_argument("--rtol", type=float, help="relative tolerance for every precision (default: per precision)")
    parser.add_argument("--candidate", action="append", metavar="BACKEND:PRECISION",
                        help="compare only these (repeatable), e.g. openvino:bf16 or tensorrt:gpu "
                             "(default: every backend and precision)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--json", help="also write the report to this JSON file")
    parser.set_defaults(handler=_check)


def _check(args):
    from bodyrt.check import run_check

    run_check(args.bundle, args.images, args.box, threads=args.threads, atol=args.atol, rtol=args.rtol,
              json_path=args.json, candidates=args.candidate)


def _add_build_capi(commands):
    parser = commands.add_parser(
        "build-capi", help="build libbodyrt.so (the runtime for C programs), bodyrt.h and an example")
    parser.add_argument("--out", required=True, help="output directory")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--embedded", action="store_true",
                      help="the library that embeds this Python and its runtime (onnxruntime, and the GPU "
                           "backends such as TensorRT) instead of the native C++ one on OpenVINO")
    kind.add_argument("--sanitize", action="store_true",
                      help="the native library built with AddressSanitizer and UndefinedBehaviorSanitizer "
                           "(link programs with -fsanitize=address,undefined)")
    parser.set_defaults(handler=_build_capi)


def _build_capi(args):
    from bodyrt.runtime.capi.build import build_library, compile_command

    if args.embedded:
        paths = build_library(args.out)
    else:
        from bodyrt.runtime.capi.native_build import build_native_library

        paths = build_native_library(args.out, sanitize=args.sanitize)
    for what, path in paths.items():
        print(f"bodyrt: wrote {what.replace('_', ' ')} {path}")
    command = compile_command("program.c", "program", paths["library"].parent)
    print(f"bodyrt: compile a program with: {' '.join(command)}")


def _add_serve(commands):
    parser = commands.add_parser(
        "serve", help="serve a bundle over HTTP on Ray Serve: replicas, request batching, one machine or a cluster")
    parser.add_argument("--bundle", required=True, help="exported bundle directory (at the same path on every "
                        "node of a cluster)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas, each opening the bundle once "
                        "(default: %(default)s)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves for each replica; "
                        "its inference threads follow it (default: %(default)s)")
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime or openvino (default: %(default)s)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="as for bodyrt run (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=4, help="requests grouped on a replica at most; "
                        "1 turns batching off (default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="longest wait for a group to fill "
                        "(default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body; larger get 413 "
                        "(default: %(default)s)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image, checked before decoding "
                        "(default: %(default)s)")
    parser.add_argument("--max-persons", type=int, default=16, help="most boxes in one request (default: %(default)s)")
    parser.add_argument("--request-timeout-s", type=float, default=60.0, help="time limit of one request on a "
                        "replica; past it 504 (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on "
                        "(default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--address", help="a running Ray cluster (auto, HEAD:6379 or ray://HEAD:10001); "
                        "default: start a local single-node Ray")
    parser.set_defaults(handler=_serve)


def _serve(args):
    from bodyrt.serve import RequestLimits, ServeSettings, serve_forever

    for name in ("max_upload_mb", "max_megapixels"):
        value = getattr(args, name)
        if not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    limits = RequestLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                           max_image_pixels=int(args.max_megapixels * 1_000_000), max_persons=args.max_persons,
                           request_timeout_s=args.request_timeout_s, max_batch_size=args.max_batch_size,
                           batch_wait_ms=args.batch_wait_ms)
    serve_forever(ServeSettings(bundle=args.bundle, replicas=args.replicas, cpus_per_replica=args.cpus_per_replica,
                                backend=args.backend, precision=args.precision, limits=limits, host=args.host,
                                port=args.port, address=args.address))


def _add_info(commands):
    parser = commands.add_parser(
        "info", help="version, CPU and its features, usable backends, the OpenVINO compile cache and its size")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_info)


def _info(args):
    from bodyrt.info import print_info

    print_info(as_json=args.json)


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
    _add_quantize(commands)
    _add_compare(commands)
    _add_convert(commands)
    _add_check(commands)
    _add_build_capi(commands)
    _add_serve(commands)
    _add_info(commands)
    return parser


def protect_box_numbers(argv: list[str]) -> list[str]:
    """argparse takes "-1e3" or "-.5e1" after --box for an option (it knows only plain negative
    numbers); a leading space hides the dash from it, and float() ignores the space."""
    protected = list(argv)
    for index, token in enumerate(argv):
        if token != "--box":
            continue
        for position in range(index + 1, min(index + 5, len(argv))):
            value = argv[position]
            try:
                float(value)
            except ValueError:
                break
            if value.startswith("-"):
                protected[position] = " " + value
    return protected


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(protect_box_numbers(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="bodyrt: %(levelname)s: %(message)s")
    previous = install_termination_handlers()
    try:
        args.handler(args)
    except BodyrtError as error:
        print(f"bodyrt: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk or a read-only folder met outside the checks: one line, no traceback
        print(f"bodyrt: error: {error.filename or ''}{': ' if error.filename else ''}"
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bodyrt: interrupted", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"bodyrt: stopped by signal {signal.Signals(stop.signal_number).name}", file=sys.stderr)
        return 128 + stop.signal_number
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that every `finally` and cleanup runs
    (an export removes its staging folder) as it does for Ctrl-C."""

    def __init__(self, signal_number: int):
        super().__init__(f"terminated by signal {signal_number}")
        self.signal_number = signal_number


def _raise_terminated(signal_number, frame):
    raise Terminated(signal_number)


def install_termination_handlers() -> dict:
    """SIGTERM (systemd, Docker, kill) and SIGHUP clean up like SIGINT; returns the previous handlers.
    Left alone when not in the main thread or when the signal is ignored (nohup)."""
    import threading

    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for number in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(number)
        if current is signal.SIG_IGN:
            continue
        previous[number] = signal.signal(number, _raise_terminated)
    return previous


if __name__ == "__main__":
    sys.exit(main())
