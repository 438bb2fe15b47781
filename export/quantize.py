"""`bodyrt quantize`: an int8 variant of a bundle, calibrated on a folder of the user's images.

Post-training static quantization with ONNX Runtime's quantizer: QDQ format, unsigned 8-bit
activations, signed 8-bit per-channel weights, min/max ranges, and only Conv operations quantized.
The QDQ graphs run on both OpenVINO (which fuses them into int8 kernels) and ONNX Runtime.

Why ONNX Runtime's tool rather than NNCF: both write QDQ graphs that OpenVINO runs at the same speed
(hand stage, 4.7 ms either way, measured on a Xeon with VNNI when this was written), but NNCF's
default scope also quantizes the MatMuls of the joints-only SMPL-X layer inside the body stage, which
moved the part boxes by ~400 px on the demo weights; restricting it needs a hand-kept ignored scope
per architecture. "Conv only" says the same thing in one line, keeps the SMPL-X and rotation math at
fp32 (part boxes within ~1 px of fp32, also on an AVX2-only EPYC), and needs nothing beyond
onnxruntime and onnx, which the runtime already installs, where NNCF brings a dozen packages.

Each image is one person, its box the whole image (crop the calibration photos around one person).
The fp32 runtime runs every image so that each stage is calibrated on its real inputs (the hand and
face crops come from the body stage's boxes). The variant's graphs are written beside the fp32 ones
(`body.int8.onnx`, ...) and the manifest gains `variants.int8` and their hashes; the fp32 graphs and
the stages in the manifest's `fp32_stages` are left as they are.
"""

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bodyrt.errors import BodyrtError, InputError
from bodyrt.export.out_folder import require_own_bundle
from bodyrt.files import apply_umask
from bodyrt.progress import progress
from bodyrt.runtime.bundle import MANIFEST_NAME, read_bundle, sha256_of
from bodyrt.runtime.manifest import parse_manifest

log = logging.getLogger("bodyrt")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUANTIZED_OPS = ["Conv"]


def calibration_images(folder) -> list[Path]:
    """The JPEG and PNG files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: calibration folder does not exist or is not a directory")
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def collect_stage_inputs(bundle_path, images: list[Path], quantize: list[str], threads: int) -> dict:
    """Run the fp32 pipeline on each image; stage name -> list of its input feeds (one person each).

    Unreadable images and images the pipeline rejects are skipped with a warning.
    """
    from bodyrt.images import load_image
    from bodyrt.run import person_boxes_for
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle_path, backend="onnxruntime", threads=threads)
    inputs = {name: [spec.name for spec in pipeline.bundle.stage(name).inputs] for name in quantize}
    feeds = {name: [] for name in quantize}
    for path in progress(images, label="calibrate"):
        try:
            image = load_image(path)
            pipeline(image, person_boxes_for(image, None))
        except BodyrtError as error:
            log.warning("calibration image skipped: %s", error)
            continue
        for name, names in inputs.items():
            feeds[name].append({key: pipeline.last_tensors[key] for key in names})
    pipeline.close()
    return feeds


class _FeedReader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.remaining = iter(feeds)

    def get_next(self):
        return next(self.remaining, None)

    def rewind(self):
        pass


class _DropPreprocessingAdvice(logging.Filter):
    """quantize_static advises, through the root logger, running its shape-inference pre-processing
    first; the exported stage graphs carry their shapes already, so the advice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def quantize_graph(source: Path, target: Path, feeds: list[dict]) -> None:
    """Quantize one ONNX graph (Conv only, QDQ, u8 activations, s8 per-channel weights) to `target`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    advice = _DropPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as scratch:
            partial = Path(scratch) / target.name
            quantize_static(str(source), str(partial), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            apply_umask(partial)
            os.replace(partial, target)
    finally:
        logging.getLogger().removeFilter(advice)


def graph_deviation(fp32_path: Path, int8_path: Path, feeds: list[dict], threads: int) -> dict:
    """Largest |int8 - fp32| per output over the calibration feeds, both in ONNX Runtime."""
    from bodyrt.runtime.backends import OnnxRuntimeRunner

    fp32 = OnnxRuntimeRunner(fp32_path, threads=threads).activate()
    int8 = OnnxRuntimeRunner(int8_path, threads=threads).activate()
    worst = {}
    for feed in feeds:
        expected, got = fp32.infer(feed), int8.infer(feed)
        for name, value in expected.items():
            deviation = float(np.max(np.abs(got[name] - value))) if value.size else 0.0
            worst[name] = max(worst.get(name, 0.0), deviation)
    return worst


def write_manifest(bundle_path: Path, manifest: dict) -> None:
    """Replace manifest.json atomically, after checking it as the runtime will read it."""
    text = json.dumps(parse_manifest(manifest, f"{bundle_path / MANIFEST_NAME} (new)").to_json())
    with tempfile.NamedTemporaryFile("w", dir=bundle_path, suffix=".partial", delete=False) as stream:
        stream.write(text)
    apply_umask(stream.name)  # NamedTemporaryFile makes 0600 files; the manifest must stay readable by all
    os.replace(stream.name, bundle_path / MANIFEST_NAME)


def quantize_bundle(bundle_path, calibration_folder, threads: int = 2, max_images: int = 100) -> dict:
    """Calibrate on the folder's images and add the int8 variant to the bundle; returns the variant entry.

    Raises InputError when the folder holds no usable image. Running it again replaces the variant.
    """
    import onnxruntime

    bundle = read_bundle(bundle_path)
    require_own_bundle(bundle.path)  # the int8 graphs and the manifest are written into this folder
    bundle_path = bundle.path
    manifest = bundle.manifest.to_json()  # edited as JSON, checked again by write_manifest
    if max_images < 1:
        raise InputError(f"--max-images must be at least 1, got {max_images}")
    images = calibration_images(calibration_folder)[:max_images]
    if not images:
        raise InputError(f"{calibration_folder}: no calibration images (JPEG or PNG files, one person each)")
    keep_fp32 = set(manifest.get("fp32_stages", []))
    quantize = [stage["name"] for stage in manifest["stages"] if stage["name"] not in keep_fp32]
    feeds = collect_stage_inputs(bundle_path, images, quantize, threads)
    used = len(feeds[quantize[0]]) if quantize else 0
    if used == 0:
        raise InputError(f"{calibration_folder}: none of the {len(images)} images could be used for calibration "
                         "(unreadable, or rejected by the pipeline); give JPEG or PNG photos of one person each")

    # Drop the old variant from the manifest first: a crash while the graphs are rewritten then leaves
    # a valid fp32 bundle, never a manifest whose hashes do not match its files.
    old = manifest.get("variants", {}).pop("int8", None)
    if old:
        for file in old["stages"].values():
            manifest["files"].pop(file, None)
        write_manifest(bundle_path, manifest)

    stages, deviations = {}, {}
    for name in progress(quantize, label="quantize"):
        source = bundle.file(bundle.stage(name).file)
        target = bundle_path / f"{name}.int8.onnx"
        quantize_graph(source, target, feeds[name])
        deviations[name] = graph_deviation(source, target, feeds[name], threads)
        log.info("stage %s quantized; largest deviation from fp32 on the calibration set: %s", name,
                 {key: round(value, 6) for key, value in deviations[name].items()})
        stages[name] = target.name
        manifest["files"][target.name] = sha256_of(target)
    variant = {"stages": stages, "method": "onnxruntime quantize_static: QDQ, Conv only, u8 activations, "
                                           "s8 per-channel weights, min/max calibration",
               "calibration": {"folder": str(Path(calibration_folder).resolve()), "images": used,
                               "skipped": len(images) - used},
               "calibration_deviation": deviations,
               "tools": {"onnxruntime": onnxruntime.__version__},
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest.setdefault("variants", {})["int8"] = variant
    write_manifest(bundle_path, manifest)
    return variant
