"""`bodyrt check`: every stage on the CPU backends and precisions here, against ONNX Runtime fp32,
compared for real by Polygraphy's comparator (GPU candidates are reported as skipped here)."""

import json

import numpy as np
import pytest

pytest.importorskip("polygraphy", reason='Polygraphy is not installed: pip install ".[check]"')


@pytest.fixture(scope="module")
def one_scene_png(demo_files, tmp_path_factory):
    from PIL import Image

    from bodyrt.export.demo import sample_scene

    image, box = sample_scene(demo_files[1], seed=3, size=(360, 480))
    path = tmp_path_factory.mktemp("check") / "scene.png"
    Image.fromarray(image).save(path)
    return path, [float(value) for value in np.asarray(box).reshape(-1)[:4]]


def test_cli_check_compares_the_cpu_backends_per_stage(bundle_dir, one_scene_png, tmp_path, capsys):
    from bodyrt.cli import main

    image, box = one_scene_png
    report_path = tmp_path / "check.json"
    code = main(["check", "--bundle", str(bundle_dir), str(image), "--box", *map(str, box),
                 "--json", str(report_path)])
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert code == 0, printed
    assert report["baseline"] == "onnxruntime fp32" and report["scenes"] == 1
    candidates = {f"{entry['backend']} {entry['precision']}": entry for entry in report["candidates"]}
    stages = [stage["name"] for stage in json.loads((bundle_dir / "manifest.json").read_text())["stages"]]
    openvino = candidates["openvino fp32"]
    assert openvino["passed"] and [stage["stage"] for stage in openvino["stages"]] == stages
    for stage in openvino["stages"]:
        assert stage["precision"] == "fp32" and stage["outputs"]
        assert all(0 <= output["max_absdiff"] <= stage["atol"] or output["max_reldiff"] <= stage["rtol"]
                   for output in stage["outputs"].values())
    # the body backbone's float32 sums differ between the two libraries: a real, non-zero comparison
    assert max(output["max_absdiff"] for output in openvino["stages"][0]["outputs"].values()) > 0
    assert "no int8 variant" in candidates["onnxruntime int8"]["skipped"]
    assert candidates["tensorrt gpu"]["skipped"] and candidates["cuda gpu"]["skipped"]
    assert report["compared"] >= 1 and report["passed"]
    assert "openvino fp32      body     ok" in printed and "all compared stages agree" in printed


def test_check_names_where_outputs_diverge(bundle_dir, one_scene_png, capsys):
    """At a tolerance below the libraries' float32 differences, the body stage diverges: the report
    names the output, and the worst element's values are those the two backends really produce."""
    from bodyrt.check import DivergenceError, check_bundle, format_report, stage_feeds
    from bodyrt.errors import BodyrtError
    from bodyrt.cli import main
    from bodyrt.compare import scenes_from_images
    from bodyrt.runtime.backends import OnnxRuntimeRunner
    from bodyrt.runtime.bundle import read_bundle
    from bodyrt.runtime.openvino_backend import OpenVinoRunner

    image, box = one_scene_png
    scenes = scenes_from_images([image], [box])
    report = check_bundle(bundle_dir, scenes=scenes, candidates=[("openvino", "fp32")],
                          tolerances={"fp32": (1e-7, 0.0)})
    assert not report["passed"]
    body = report["candidates"][0]["stages"][0]
    assert body["stage"] == "body" and not body["passed"]
    name, output = next((name, output) for name, output in body["outputs"].items() if not output["passed"])
    where = output["where"]
    assert where["failing"] >= 1 and where["scene"] == 0

    bundle = read_bundle(bundle_dir)
    stage = bundle.manifest.stage("body")
    feeds = stage_feeds(bundle_dir, scenes)["body"][0]
    expected = OnnxRuntimeRunner(bundle.file(stage.file)).activate().infer(feeds)[name]
    got = OpenVinoRunner(bundle.file(stage.file), precision="fp32", input_specs=stage.inputs).activate().infer(
        feeds)[name]
    index = tuple(where["index"])
    assert where["expected"] == pytest.approx(float(expected[index]), abs=1e-6)
    assert where["got"] == pytest.approx(float(got[index]), abs=1e-6)
    assert np.abs(got - expected).max() == pytest.approx(output["max_absdiff"], rel=1e-5)
    assert f"{name}: {where['failing']} of" in format_report(report)

    code = main(["check", "--bundle", str(bundle_dir), str(image), "--box", *map(str, box), "--atol", "0",
                 "--rtol", "0", "--candidate", "openvino:fp32"])
    captured = capsys.readouterr()
    assert code == 1 and "DIVERGES" in captured.out
    assert "error: outputs diverge from onnxruntime fp32 in: " in captured.err and "Traceback" not in captured.err
    assert issubclass(DivergenceError, BodyrtError)


def test_check_refuses_bad_arguments(bundle_dir, tmp_path, capsys):
    from bodyrt.cli import main

    assert main(["check", "--bundle", str(bundle_dir), "--atol", "-1"]) == 1
    assert "--atol and --rtol must be >= 0" in capsys.readouterr().err
    assert main(["check", "--bundle", str(tmp_path / "missing")]) == 1
    assert "no such bundle directory" in capsys.readouterr().err
    assert main(["check", "--bundle", str(bundle_dir), "--candidate", "openvino:fp64"]) == 1
    assert "--candidate openvino:fp64 is not one of onnxruntime:int8, openvino:fp32" in capsys.readouterr().err
