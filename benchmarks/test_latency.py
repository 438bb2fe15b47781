"""End-to-end and per-stage latency of the PyTorch reference and each runtime backend, same inputs,
same run. Ratios against the reference are stored in each benchmark's extra_info and printed."""

import os
import statistics

import pytest

from bodyrt.bench import bench_image

FULL = os.environ.get("BODYRT_BENCH_FULL") == "1"  # otherwise the short mode CI runs
ROUNDS = 15 if FULL else 3

PERSONS = [1, 2, 4, 8] if FULL else [1]
SIZES = ["720p", "1080p", "4k"] if FULL else ["720p"]
MEDIANS = {}


def run_rounds(benchmark, function, *args):
    return benchmark.pedantic(function, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("persons", PERSONS)
@pytest.mark.parametrize("candidate", ["pytorch", "onnxruntime", "openvino"])
def test_end_to_end(benchmark, candidates, candidate, persons, size):
    if candidate not in candidates:
        pytest.skip(f"backend {candidate} is not available here")
    image, boxes = bench_image(size, persons)
    benchmark.group = f"end-to-end {persons}p {size}"
    result = run_rounds(benchmark, candidates[candidate], image, boxes)
    assert result.outputs["vertices"].shape == (persons, 10475, 3)
    median = statistics.median(benchmark.stats.stats.data)
    MEDIANS[(candidate, persons, size)] = median
    reference = MEDIANS.get(("pytorch", persons, size))
    if reference and candidate != "pytorch":
        benchmark.extra_info["speedup_vs_pytorch"] = reference / median
        print(f"\n{candidate} {persons}p {size}: {reference / median:.2f}x faster than PyTorch")


@pytest.mark.parametrize("stage", ["body", "hand", "face", "merge"])
@pytest.mark.parametrize("candidate", ["pytorch", "onnxruntime"])
def test_stage(benchmark, candidates, candidate, stage):
    """One stage graph on the intermediate tensors of a 1-person 720p run."""
    reference = candidates["pytorch"]
    image, boxes = bench_image("720p", 1)
    reference(image, boxes)
    stage_inputs = {name: value.clone() for name, value in reference.last_intermediates.items()}
    benchmark.group = f"stage {stage}"
    if candidate == "pytorch":
        import torch

        module = {"body": reference.body_stage, "hand": reference.hand_stage, "face": reference.face_stage,
                  "merge": reference.merge_stage}[stage]
        names = {"body": ["body_crops", "crop_transforms"], "hand": ["hand_crops", "hand_starts"],
                 "face": ["face_crops", "face_starts"],
                 "merge": ["body_params", "hand_params", "face_params"]}[stage]

        def call():
            with torch.inference_mode():
                return module(*(stage_inputs[name] for name in names))
        run_rounds(benchmark, call)
    else:
        runner = candidates[candidate].runners[stage]
        spec = candidates[candidate].bundle.stage(stage)
        feeds = {item.name: stage_inputs[item.name].numpy() for item in spec.inputs}
        run_rounds(benchmark, runner.infer, feeds)
