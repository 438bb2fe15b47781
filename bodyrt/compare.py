"""`bodyrt compare`: what each precision costs in fidelity and buys in speed, on the user's images.

For each precision (fp32, bf16, int8) the bundle is opened on one backend and run on every image;
the report gives the vertex deviation from the same backend at fp32 (max and mean over vertices and
people, in mm), the joint deviation, and the median latency, timed interleaved (fp32, bf16, int8,
fp32, ...) so that a busy machine slows every precision alike. Deviations depend on the weights:
numbers measured on the untrained demo checkpoint say nothing about a trained one, so re-measure on
your checkpoint and on photos like the ones you will run.
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np

from bodyrt.errors import BodyrtError, InputError
from bodyrt.progress import progress, waiting

PRECISIONS = ("fp32", "bf16", "int8")


def distances_mm(ours: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per-point Euclidean distance in mm between two (N, V, 3) point sets given in metres."""
    if ours.shape != baseline.shape:
        raise InputError(f"cannot compare point sets of shape {ours.shape} and {baseline.shape}")
    return np.linalg.norm(ours.astype(np.float64) - baseline.astype(np.float64), axis=-1) * 1000.0


def fidelity(outputs: list[dict], baseline: list[dict]) -> dict:
    """Max and mean vertex and joint deviation (mm) of one candidate's outputs from the baseline's,
    over every point, person and scene."""
    report = {}
    for key in ("vertices", "joints"):
        distances = np.concatenate([distances_mm(ours[key], theirs[key]).ravel()
                                    for ours, theirs in zip(outputs, baseline)])
        report[f"{key}_max_mm"] = float(distances.max(initial=0.0))
        report[f"{key}_mean_mm"] = float(distances.mean()) if distances.size else 0.0
    return report


def scenes_from_images(paths, boxes=None) -> list[tuple]:
    """[(image (H, W, 3) uint8, boxes (N, 4))]: the --box values for every image, or the whole image."""
    from bodyrt.images import load_image
    from bodyrt.run import person_boxes_for

    scenes = []
    for path in paths:
        image = load_image(path)
        scenes.append((image, person_boxes_for(image, boxes)))
    return scenes


def synthetic_scenes(count: int = 3) -> list[tuple]:
    """`count` synthetic 720p one-person images (the bench's), for when no image is given."""
    from bodyrt.bench import bench_image

    return [bench_image("720p", 1, seed=seed) for seed in range(count)]


def compare_precisions(bundle, scenes: list[tuple], backend: str = "openvino", precisions=PRECISIONS,
                       threads: int = 2, repeats: int = 3, json_path=None) -> dict:
    """Run every precision on every scene; print and return the fidelity and latency report.

    A precision this machine or bundle cannot run (bf16 without native support, int8 without a
    quantized variant) is reported as skipped, with the reason, instead of failing the others.
    """
    from bodyrt.runtime import open_bundle

    if not scenes:
        raise InputError("no images to compare on")
    precisions = list(dict.fromkeys(["fp32", *precisions]))  # fp32 first: the baseline
    pipelines, skipped = {}, {}
    for precision in precisions:
        try:
            with waiting(f"compare: opening {backend} {precision} (compiling its models the first time)"):
                pipelines[precision] = open_bundle(bundle, backend=backend, threads=threads, precision=precision)
        except BodyrtError as error:
            if precision == "fp32":
                raise
            skipped[precision] = str(error)
    outputs = {precision: [pipeline(image, boxes).outputs for image, boxes in scenes]  # also warms up
               for precision, pipeline in pipelines.items()}
    latencies = {precision: [] for precision in pipelines}
    for _ in progress(range(repeats), label="compare"):
        for image, boxes in scenes:
            for precision, pipeline in pipelines.items():
                start = time.perf_counter()
                pipeline(image, boxes)
                latencies[precision].append((time.perf_counter() - start) * 1000.0)
    report = {"backend": backend, "threads": threads, "scenes": len(scenes), "repeats": repeats,
              "baseline": f"{backend} fp32", "precisions": {}, "skipped": skipped}
    for precision, pipeline in pipelines.items():
        entry = fidelity(outputs[precision], outputs["fp32"])
        entry["median_ms"] = statistics.median(latencies[precision]) if latencies[precision] else float("nan")
        entry["stage_precisions"] = dict(pipeline.stage_precisions)
        report["precisions"][precision] = entry
        pipeline.close()
    print_comparison(report)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def print_comparison(report: dict) -> None:
    print(f"\n{report['backend']}, {report['threads']} threads, {report['scenes']} image(s) x {report['repeats']} "
          f"interleaved rounds; deviation from {report['baseline']}, mm")
    print(f"{'precision':<10}{'median ms':>10}{'vert max':>10}{'vert mean':>10}{'joint max':>10}  stages")
    for precision, entry in report["precisions"].items():
        stages = " ".join(f"{name}:{value}" for name, value in entry["stage_precisions"].items())
        print(f"{precision:<10}{entry['median_ms']:>10.1f}{entry['vertices_max_mm']:>10.2f}"
              f"{entry['vertices_mean_mm']:>10.2f}{entry['joints_max_mm']:>10.2f}  {stages}")
    for precision, reason in report["skipped"].items():
        print(f"{precision:<10}skipped: {reason}")
    print("Deviations depend on the weights: re-measure on your own checkpoint and images.")
