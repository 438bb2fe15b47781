"""`bodyrt bench`: interleaving, the statistics it reports, and the CLI against the reference.

Timings are never asserted; only what the report computes from them is.
"""

import json
import statistics
from types import SimpleNamespace

import numpy as np
import pytest

from bodyrt.bench import bench_image, interleaved_runs, summarise
from bodyrt.cli import main


class FakeCandidate:
    """Records the global call order; reports a fixed per-stage timing."""

    def __init__(self, name, calls, stage_ms):
        self.name, self.calls, self.stage_ms = name, calls, stage_ms

    def __call__(self, image, boxes):
        self.calls.append(self.name)
        return SimpleNamespace(timings_ms={"body": self.stage_ms})


def test_candidates_run_interleaved_after_their_warm_up():
    calls = []
    candidates = {name: FakeCandidate(name, calls, 1.0) for name in ("pytorch", "onnxruntime")}
    samples = interleaved_runs(candidates, None, None, repeats=3, warmup=2)
    assert calls == ["pytorch"] * 2 + ["onnxruntime"] * 2 + ["pytorch", "onnxruntime"] * 3
    assert [len(runs) for runs in samples.values()] == [3, 3]
    assert all(run["body"] == 1.0 and run["total"] >= 0 for runs in samples.values() for run in runs)


def test_summary_takes_the_speed_up_pair_by_pair():
    reference = [100.0, 300.0, 200.0, 400.0]
    ours = [50.0, 100.0, 100.0, 400.0]
    samples = {"pytorch": [{"total": t, "body": t / 2} for t in reference],
               "onnxruntime": [{"total": t, "body": t / 4} for t in ours]}
    summary = summarise(samples, persons=2, reference="pytorch")
    entry = summary["onnxruntime"]
    assert entry["median_ms"] == 100.0 and entry["min_ms"] == 50.0
    assert entry["p90_ms"] == pytest.approx(np.percentile(ours, 90))
    assert entry["throughput_persons_per_s"] == pytest.approx(2 * 1000.0 / 100.0)
    assert entry["stages_ms"] == {"body": 25.0}
    # pairs: 2, 3, 2, 1 -> median 2, min 1, max 3 (not the ratio of medians, 250 / 100)
    assert entry["speedup_vs_reference"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert "speedup_vs_reference" not in summary["pytorch"]


def test_bench_image_boxes_are_inside_and_side_by_side():
    image, boxes = bench_image("1080p", persons=4)
    assert image.shape == (1080, 1920, 3) and image.dtype == np.uint8
    assert boxes.shape == (4, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 1920).all() and (boxes[:, 3] <= 1080).all()
    assert (boxes[1:, 0] >= boxes[:-1, 2]).all()  # no two people overlap


@pytest.mark.parametrize("arguments, message", [
    (["--persons", "0"], "--persons must be at least 1"),
    (["--image-size", "8k"], "--image-size must be one of"),
    (["--reference"], "--reference needs --checkpoint and --body-model"),
])
def test_bad_bench_arguments_are_one_line_errors(bundle_dir, arguments, message, capsys):
    assert main(["bench", "--bundle", str(bundle_dir), "--no-memory", *arguments]) == 1
    assert message in capsys.readouterr().err


def test_cli_reports_the_ratio_against_the_reference(bundle_dir, demo_files, tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    checkpoint, body_model = demo_files
    assert main(["bench", "--bundle", str(bundle_dir), "--reference", "--checkpoint", str(checkpoint),
                 "--body-model", str(body_model), "--repeats", "2", "--warmup", "1", "--no-memory",
                 "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(report["summary"]) == {"pytorch", "onnxruntime"}
    ours = report["summary"]["onnxruntime"]
    pairs = [ref["total"] / run["total"]
             for ref, run in zip(report["samples"]["pytorch"], report["samples"]["onnxruntime"])]
    assert ours["speedup_vs_reference"]["median"] == pytest.approx(statistics.median(pairs))
    assert {"body_crop", "body", "part_crops", "hand", "face", "merge"} <= set(ours["stages_ms"])
    assert f"{ours['speedup_vs_reference']['median']:.2f}x" in printed
    assert "median per stage" in printed


def test_peak_memory_is_measured_in_a_fresh_process(bundle_dir):
    from bodyrt.bench import peak_rss_mb

    weights_mb = sum(path.stat().st_size for path in bundle_dir.glob("*.onnx")) / 2**20
    ballast = np.ones(int(4 * weights_mb * 2**20), dtype=np.uint8)  # this process: over 4x the weights
    peak = peak_rss_mb("onnxruntime", bundle_dir, None, threads=2, image_size="720p", persons=1)
    # The stage graphs alone are over 400 MB of weights; a process holding them cannot be smaller. The
    # probe's own peak, not this (forking) process's, is what is reported.
    assert weights_mb < peak < 3 * weights_mb
    assert ballast[-1] == 1  # held until the probe has finished

