"""`bodyrt demo`: the whole product on synthetic inputs, with no licensed file anywhere.

It generates a synthetic SMPL-X model and a seeded, UNTRAINED checkpoint in the official ExPose
layout (cached outside the repository), exports the bundle, renders a sample image of the synthetic
person, runs it through the ONNX Runtime pipeline, writes the outputs, and times the runtime
against the PyTorch reference, stage by stage.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bodyrt.export.fixtures.scenes import DEMO_SEED, sample_scene


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bodyrt"
    root.mkdir(parents=True, exist_ok=True)
    return root


def demo_inputs(directory=None, seed: int = DEMO_SEED) -> tuple[Path, Path]:
    """(checkpoint, body model) for the demo and the tests, generated once and cached."""
    from bodyrt.export.fixtures.checkpoints import write_random_checkpoint
    from bodyrt.export.fixtures.body_models import smplx_arrays, write_smplx_model

    directory = Path(directory or cache_dir() / f"demo-seed{seed}")
    directory.mkdir(parents=True, exist_ok=True)
    body_model = directory / "SMPLX_NEUTRAL.npz"
    if not body_model.is_file():
        with tempfile.TemporaryDirectory(dir=directory) as partial:
            os.replace(write_smplx_model(partial, seed=seed), body_model)
    checkpoint = directory / "expose_untrained.ckpt"
    if not checkpoint.is_file():
        print("bodyrt demo: writing a seeded untrained checkpoint in the official layout ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=directory) as partial:
            partial_checkpoint = Path(partial) / checkpoint.name
            write_random_checkpoint(partial_checkpoint, seed=seed, body_model_arrays=smplx_arrays(seed=seed))
            os.replace(partial_checkpoint, checkpoint)
    return checkpoint, body_model


def demo_bundle(directory=None, seed: int = DEMO_SEED, threads: int = 2) -> Path:
    """The demo checkpoint exported to `directory/bundle`, re-exported when the checkpoint changed or
    the bundle was exported by another bodyrt version. Says where the bundle is, every time."""
    from bodyrt.export.bundle import export_bundle
    from bodyrt.runtime.bundle import sha256_of

    directory = Path(directory or cache_dir() / f"demo-seed{seed}")
    checkpoint, body_model = demo_inputs(directory, seed)
    bundle_dir = directory / "bundle"
    if not _bundle_matches(bundle_dir, sha256_of(checkpoint)):
        print(f"bodyrt demo: exporting the bundle to {bundle_dir} ...", file=sys.stderr)
        export_bundle(checkpoint, body_model, bundle_dir, threads=threads)
    else:
        print(f"bodyrt demo: reusing the bundle {bundle_dir} (exported earlier by this bodyrt version)",
              file=sys.stderr)
    return bundle_dir


def _median_timings(runs: list[dict]) -> dict:
    names = list(runs[0])
    return {name: statistics.median(run[name] for run in runs) for name in names}


def run_demo(out_dir="bodyrt-demo", threads: int = 2, repeats: int = 5) -> dict:
    """Generate, export, run and time; returns the median per-stage timings of both pipelines."""
    from bodyrt.export.reference import ReferencePipeline
    from bodyrt.images import save_png
    from bodyrt.run import run_images
    from bodyrt.runtime import open_bundle

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("bodyrt demo: the weights are UNTRAINED (random, seeded) and the body model is SYNTHETIC;\n"
          "  the pipeline, the numbers and the timings are real, the meshes are not meaningful.")
    checkpoint, body_model = demo_inputs()
    bundle_dir = demo_bundle(threads=threads)
    image, box = sample_scene(body_model)
    image_path = out_dir / "sample.png"
    save_png(image_path, image)
    summary = run_images([image_path], out_dir=out_dir / "results", boxes=box.tolist(), bundle=bundle_dir,
                         threads=threads)
    print(f"bodyrt demo: wrote meshes, parameters and overlay to {out_dir / 'results' / image_path.name}/, "
          f"the run's summary to {summary}")

    runtime = open_bundle(bundle_dir, threads=threads)
    reference = ReferencePipeline(checkpoint, body_model, threads=threads)
    runtime(image, box), reference(image, box)  # warm-up
    runtime_runs, reference_runs, runtime_total, reference_total = [], [], [], []
    for _ in range(repeats):  # interleaved so that machine drift hits both alike
        start = time.perf_counter()
        runtime_runs.append(runtime(image, box).timings_ms)
        runtime_total.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        reference_runs.append(reference(image, box).timings_ms)
        reference_total.append((time.perf_counter() - start) * 1000)
    timings = {"onnxruntime": _median_timings(runtime_runs), "pytorch": _median_timings(reference_runs)}
    timings["onnxruntime"]["total"] = statistics.median(runtime_total)
    timings["pytorch"]["total"] = statistics.median(reference_total)
    _print_table(timings, threads, repeats)
    print("To run real weights: bodyrt export --checkpoint model.ckpt --body-model SMPLX_NEUTRAL.npz "
          "--out bundle/ && bodyrt run --bundle bundle/ photo.jpg --out results/")
    return timings


def _bundle_matches(bundle_dir: Path, checkpoint_sha256: str) -> bool:
    """True when bundle_dir is a valid bundle of this checkpoint exported by this bodyrt version."""
    import bodyrt
    from bodyrt.errors import BundleError
    from bodyrt.runtime.bundle import read_bundle

    try:
        manifest = read_bundle(bundle_dir).manifest
    except BundleError:
        return False
    tools = getattr(manifest, "tools", None) or {}
    return manifest.source.checkpoint_sha256 == checkpoint_sha256 and tools.get("bodyrt") == bodyrt.__version__


def _print_table(timings: dict, threads: int, repeats: int) -> None:
    runtime, reference = timings["onnxruntime"], timings["pytorch"]
    print(f"\nmedian latency per stage, ms (1 person, 720p, {threads} threads, {repeats} interleaved runs)")
    print(f"{'stage':<12}{'onnxruntime':>13}{'pytorch':>11}")
    for name in ["body_crop", "body", "hand_crops", "face_crops", "hand", "face", "merge", "pinhole", "total"]:
        ours = runtime.get(name, 0.0)
        theirs = reference.get(name, 0.0)
        print(f"{name:<12}{ours:>13.1f}{theirs:>11.1f}")
    print(f"speed-up end to end: {reference['total'] / runtime['total']:.2f}x (median of {repeats} runs: a rough "
          "figure, other processes on the machine move it by 10% or more; `bodyrt bench` measures properly)\n")
