"""What each CPU speed lever of the ONNX Runtime pipeline gives (one person, 720p, 2 threads).

    BODYRT_BENCH_FULL=1 pytest benchmarks/test_levers.py --benchmark-group-by=group -s

Each group times the same work with the lever off and on, in the same run; the README's performance
section records the medians. Short mode (CI) runs every lever for two rounds.
"""

import os
import threading

import numpy as np
import pytest

from bodyrt.bench import bench_image
from bodyrt.runtime import open_bundle
from bodyrt.runtime.backends import OnnxRuntimeRunner

FULL = os.environ.get("BODYRT_BENCH_FULL") == "1"
ROUNDS = 10 if FULL else 2

# ONNX Runtime's own default keeps workers spinning after a run; the runtime's default stops them.
SPINNING = {"spin after run (ORT default)": {"session.force_spinning_stop": "0"},
            "no spinning": {"session.intra_op.allow_spinning": "0"},
            "spin, stop after run (bodyrt)": {}}


def run_rounds(benchmark, function, *args):
    return benchmark.pedantic(function, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def pipeline_with(bundle_dir, threads=2, **runner_options):
    """The ONNX Runtime pipeline with every stage's runner built with runner_options."""
    pipeline = open_bundle(bundle_dir, threads=threads)
    for stage in pipeline.manifest.stages:
        pipeline.runners[stage.name] = OnnxRuntimeRunner(
            pipeline.bundle.file(stage.file), threads=threads, **runner_options).activate()
    return pipeline


@pytest.fixture(scope="module")
def scene():
    return bench_image("720p", 1)


@pytest.fixture(scope="module")
def stage_feeds(bundle_dir, scene):
    """Every stage's inputs from one run of the default pipeline."""
    pipeline = open_bundle(bundle_dir, threads=2)
    pipeline(*scene)
    return {stage.name: {spec.name: pipeline.last_tensors[spec.name] for spec in stage.inputs}
            for stage in pipeline.manifest.stages}


@pytest.mark.parametrize("spinning", list(SPINNING))
def test_thread_spinning_between_stages(benchmark, bundle_dir, scene, spinning):
    pipeline = pipeline_with(bundle_dir, session_config=SPINNING[spinning])
    benchmark.group = "lever: worker spinning, end to end"
    result = run_rounds(benchmark, pipeline, *scene)
    assert result.outputs["vertices"].shape == (1, 10475, 3)


@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_graph_optimisation_level(benchmark, bundle_dir, stage_feeds, level):
    runner = OnnxRuntimeRunner(bundle_dir / "body.onnx", threads=2, optimization=level).activate()
    benchmark.group = "lever: graph optimisation level, body graph"
    outputs = run_rounds(benchmark, runner.infer, stage_feeds["body"])
    assert outputs["body_params"].shape == (1, 341)


@pytest.mark.parametrize("threads", [1, 2])
def test_intra_op_threads(benchmark, bundle_dir, scene, threads):
    pipeline = pipeline_with(bundle_dir, threads=threads)
    benchmark.group = "lever: intra-op threads, end to end"
    run_rounds(benchmark, pipeline, *scene)


@pytest.mark.parametrize("schedule", ["sequential, 2 threads each", "concurrent, 1 thread each"])
def test_hand_and_face_concurrently(benchmark, bundle_dir, stage_feeds, schedule):
    threads = 2 if schedule.startswith("sequential") else 1
    hand = OnnxRuntimeRunner(bundle_dir / "hand.onnx", threads=threads).activate()
    face = OnnxRuntimeRunner(bundle_dir / "face.onnx", threads=threads).activate()

    def sequential():
        return hand.infer(stage_feeds["hand"]), face.infer(stage_feeds["face"])

    def concurrent():  # ONNX Runtime releases the GIL while it runs
        results = {}
        worker = threading.Thread(target=lambda: results.update(face=face.infer(stage_feeds["face"])))
        worker.start()
        results["hand"] = hand.infer(stage_feeds["hand"])
        worker.join()
        return results["hand"], results["face"]

    benchmark.group = "lever: hand and face networks, sequential or concurrent"
    hand_out, face_out = run_rounds(benchmark, sequential if threads == 2 else concurrent)
    np.testing.assert_allclose(hand_out["hand_params"], hand.infer(stage_feeds["hand"])["hand_params"],
                               rtol=0, atol=1e-5)
    assert face_out["face_params"].shape == (1, 1, 165)


@pytest.mark.parametrize("evaluation", ["full mesh", "joints only"])
def test_joints_only_smplx_for_attention(benchmark, demo_files, evaluation):
    """The attention step needs the 144 joints; the full evaluation skins all 10,475 vertices."""
    import torch

    from bodyrt.export.body_model import BodyModel, load_body_model

    torch.set_num_threads(2)
    body_model = BodyModel(load_body_model(demo_files[1]))
    eye = torch.eye(3).expand(1, 1, 3, 3)
    inputs = (torch.zeros(1, 10), eye[:, 0], eye.expand(1, 21, 3, 3), eye.expand(1, 15, 3, 3),
              eye.expand(1, 15, 3, 3), eye[:, 0], torch.zeros(1, 10))
    evaluate = body_model.joints_only if evaluation == "joints only" else (lambda *a: body_model(*a)[1])
    benchmark.group = "lever: SMPL-X for attention, PyTorch"
    with torch.inference_mode():
        joints = run_rounds(benchmark, evaluate, *inputs)
    assert joints.shape == (1, 144, 3)
