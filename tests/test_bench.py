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
    (["--repeats", "0"], "--repeats must be at least 1"),
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
    assert {"body_crop", "body", "hand_crops", "face_crops", "hand", "face", "merge"} <= set(ours["stages_ms"])
    assert f"{ours['speedup_vs_reference']['median']:.2f}x" in printed
    assert "median per stage" in printed
    # the CPU and its measured peaks head the report; each stage graph's fraction of peak follows
    assert report["cpu"]["model"] in printed and set(report["cpu"]["features"]) >= {"avx2", "avx512_vnni", "amx_bf16"}
    assert report["peaks"]["fp32"]["gops"] > 0 and "matmul" in report["peak_derivation"]
    body = ours["roofline"]["body"]
    assert body["gops"] == pytest.approx(report["stage_operations"]["body"]["gop"] / ours["stages_ms"]["body"] * 1000)
    assert body["fraction_of_peak"] == pytest.approx(body["gops"] / report["peaks"]["fp32"]["gops"])
    assert "achieved GOP/s per stage graph" in printed


def test_peak_memory_is_measured_in_a_fresh_process(bundle_dir):
    from bodyrt.bench import peak_rss_mb

    weights_mb = sum(path.stat().st_size for path in bundle_dir.glob("*.onnx")) / 2**20
    ballast = np.ones(int(4 * weights_mb * 2**20), dtype=np.uint8)  # this process: over 4x the weights
    peak = peak_rss_mb("onnxruntime", bundle_dir, None, threads=2, image_size="720p", persons=1)
    # The stage graphs alone are over 400 MB of weights; a process holding them cannot be smaller. The
    # probe's own peak, not this (forking) process's, is what is reported.
    assert weights_mb < peak < 3 * weights_mb
    assert ballast[-1] == 1  # held until the probe has finished



def test_cpu_features_are_read_from_cpuinfo(tmp_path):
    from bodyrt.roofline import cpu_description, describe_cpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n")
    cpu = cpu_description(cpuinfo)
    assert cpu["model"] == "AMD EPYC 7B12"
    assert cpu["features"]["avx2"] and not cpu["features"]["avx512f"] and not cpu["features"]["amx_bf16"]
    assert describe_cpu(cpu).startswith("AMD EPYC 7B12, ") and describe_cpu(cpu).endswith("; avx2")


def test_operations_are_counted_from_the_graph(tmp_path):
    """A convolution, a grouped convolution and a matrix product with hand-counted multiply-adds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bodyrt.roofline import graph_operations

    rng = np.random.default_rng(0)
    weights = {"conv_w": rng.standard_normal((16, 3, 3, 3)), "group_w": rng.standard_normal((16, 4, 3, 3)),
               "matmul_w": rng.standard_normal((16 * 8 * 8, 10))}
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),  # 3x32x32 -> 16x16x16
        helper.make_node("Conv", ["a", "group_w"], ["b"], group=4, strides=[2, 2], pads=[1, 1, 1, 1]),  # -> 16x8x8
        helper.make_node("Flatten", ["b"], ["c"]),
        helper.make_node("MatMul", ["c", "matmul_w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    counted = graph_operations(path, {"x": [2, 3, 32, 32]})
    multiply_adds = 2 * (16 * 16 * 16 * 3 * 3 * 3 + 16 * 8 * 8 * 4 * 3 * 3 + 1024 * 10)
    assert counted["gop"] == pytest.approx(2 * multiply_adds / 1e9)
    assert counted["weight_mb"] == pytest.approx(sum(w.size for w in weights.values()) * 4 / 2**20, rel=0.01)


def test_stage_operations_match_the_official_code_measurement(bundle_dir):
    """REFERENCE.md: the official code costs 29.9 GFLOP (body), 7.3 (two hands), 4.75 (face) per person."""
    from bodyrt.roofline import bundle_operations
    from bodyrt.runtime.bundle import read_bundle

    operations = bundle_operations(read_bundle(bundle_dir))
    assert operations["body"]["gop"] == pytest.approx(29.9, rel=0.01)
    assert operations["hand"]["gop"] == pytest.approx(7.3, rel=0.01)
    assert operations["face"]["gop"] == pytest.approx(4.75, rel=0.01)
    two = bundle_operations(read_bundle(bundle_dir), people=2)
    assert two["body"]["gop"] == pytest.approx(2 * operations["body"]["gop"])


def test_peaks_are_measured_per_precision_with_the_kernel_named():
    import openvino

    from bodyrt.roofline import measure_peaks

    peaks = measure_peaks(threads=2, size=256, repeats=2)
    assert peaks["fp32"]["gops"] > 0 and peaks["int8"]["gops"] > 0
    assert "I8" in peaks["int8"]["kernel"] or "i8" in peaks["int8"]["kernel"].lower()
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert "bf16" in peaks["bf16"]["kernel"]
    else:
        assert "no native bf16" in peaks["bf16"]["unavailable"]


def test_roofline_fractions_use_the_precision_each_stage_ran():
    from bodyrt.bench import add_roofline

    summary = {"openvino-bf16": {"stages_ms": {"body": 100.0, "merge": 10.0}}}
    candidates = {"openvino-bf16": SimpleNamespace(stage_precisions={"body": "bf16", "merge": "fp32"})}
    operations = {"body": {"gop": 30.0}, "merge": {"gop": 0.1}}
    peaks = {"fp32": {"gops": 100.0}, "bf16": {"gops": 600.0}, "int8": {"unavailable": "no"}}
    add_roofline(summary, candidates, operations, peaks)
    roofline = summary["openvino-bf16"]["roofline"]
    assert roofline["body"] == {"precision": "bf16", "gops": pytest.approx(300.0), "fraction_of_peak": pytest.approx(0.5)}
    assert roofline["merge"]["precision"] == "fp32" and roofline["merge"]["fraction_of_peak"] == pytest.approx(0.1)


def test_the_competing_load_spins_on_one_core_and_stops():
    import time

    from bodyrt.bench import busy_core_process

    competitor = busy_core_process(0)
    try:
        time.sleep(0.5)
        status = open(f"/proc/{competitor.pid}/status").read()
        assert "Cpus_allowed_list:\t0\n" in status
        assert competitor.poll() is None
    finally:
        competitor.kill()
        competitor.wait()
    assert competitor.returncode == -9
