"""OpenVINO latency per precision, end to end and stage by stage (1 person, 720p, 2 threads).

Short mode (default): fp32 and bf16, a few rounds. Full mode (BODYRT_BENCH_FULL=1) adds int8, which
first quantizes a copy of the bundle (about 30 s of calibration). Each benchmark's extra_info holds
the vertex deviation from OpenVINO fp32 on the bench image, in mm, beside its timings.
"""

import os
import shutil

import numpy as np
import pytest

from bodyrt.bench import bench_image

pytest.importorskip("openvino")

FULL = os.environ.get("BODYRT_BENCH_FULL") == "1"
ROUNDS = 15 if FULL else 3
PRECISIONS = ["fp32", "bf16", "int8"] if FULL else ["fp32", "bf16"]


@pytest.fixture(scope="module")
def openvino_bundle(bundle_dir, demo_files, tmp_path_factory):
    """The session bundle, or in full mode a hard-linked copy of it with an int8 variant."""
    if "int8" not in PRECISIONS:
        return bundle_dir
    from bodyrt.export.fixtures.scenes import sample_scene
    from bodyrt.export.quantize import quantize_bundle
    from bodyrt.images import save_png

    calibration = tmp_path_factory.mktemp("calibration")
    for seed in range(8):
        image, box = sample_scene(demo_files[1], seed=seed, size=(360, 640))
        x0, y0, x1, y1 = box[0].astype(int)
        save_png(calibration / f"person{seed}.png", image[max(0, y0 - 10):y1 + 10, max(0, x0 - 20):x1 + 20])
    bundle = tmp_path_factory.mktemp("openvino") / "bundle"
    shutil.copytree(bundle_dir, bundle, copy_function=os.link)
    quantize_bundle(bundle, calibration)
    return bundle


@pytest.fixture(scope="module")
def pipelines(openvino_bundle):
    """precision -> OpenVINO pipeline, or the reason it is not run (short mode, or the CPU refuses it:
    bf16 without native bf16 is refused by the backend, never run at another precision)."""
    from bodyrt.errors import BackendUnavailableError
    from bodyrt.runtime import open_bundle

    opened = {precision: "not run in short mode (BODYRT_BENCH_FULL=1 runs it)"
              for precision in ("fp32", "bf16", "int8") if precision not in PRECISIONS}
    for precision in PRECISIONS:
        try:
            opened[precision] = open_bundle(openvino_bundle, backend="openvino", precision=precision)
        except BackendUnavailableError as error:
            if precision == "fp32":  # fp32 runs everywhere OpenVINO does: a refusal is a failure
                raise
            opened[precision] = f"refused on this machine: {error}"
    return opened


def pipeline_or_skip(pipelines, precision):
    pipeline = pipelines[precision]
    if isinstance(pipeline, str):
        pytest.skip(f"openvino {precision} {pipeline}")
    return pipeline


@pytest.fixture(scope="module")
def fp32_vertices(pipelines):
    image, boxes = bench_image("720p", 1)
    return pipelines["fp32"](image, boxes).outputs["vertices"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_openvino_end_to_end(benchmark, pipelines, fp32_vertices, precision):
    pipeline = pipeline_or_skip(pipelines, precision)
    image, boxes = bench_image("720p", 1)
    benchmark.group = "openvino end-to-end 1p 720p"
    result = benchmark.pedantic(pipeline, args=(image, boxes), rounds=ROUNDS, iterations=1,
                                warmup_rounds=1)
    distances = np.linalg.norm(result.outputs["vertices"] - fp32_vertices, axis=-1) * 1000.0
    benchmark.extra_info.update({"precision": precision, "stage_precisions": result.info["stage_precisions"],
                                 "vertex_deviation_max_mm": float(distances.max()),
                                 "vertex_deviation_mean_mm": float(distances.mean()),
                                 "stages_ms": result.timings_ms})
    assert result.info["precision"] == precision


@pytest.mark.parametrize("stage", ["body", "hand", "face", "merge"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_openvino_stage(benchmark, pipelines, precision, stage):
    """One stage graph on the intermediate tensors of a 1-person 720p run."""
    pipeline = pipeline_or_skip(pipelines, precision)
    image, boxes = bench_image("720p", 1)
    pipeline(image, boxes)
    feeds = {spec.name: pipeline.last_tensors[spec.name] for spec in pipeline.bundle.stage(stage).inputs}
    benchmark.group = f"openvino stage {stage}"
    benchmark.extra_info["runs_at"] = pipeline.stage_precisions[stage]
    benchmark.pedantic(pipeline.runners[stage].infer, args=(feeds,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
