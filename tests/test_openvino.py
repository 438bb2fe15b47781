"""The OpenVINO backend: fp32 parity with ONNX Runtime, bf16 and int8 fidelity, the compiled-model
cache, and the clear messages for a missing library, a CPU without bf16 and unusable calibration images.

Tolerances come from measurements on the demo bundle (untrained weights, synthetic person, 720p),
as vertex deviation from OpenVINO fp32:

    fp32 vs ONNX Runtime   at most 4e-7 m on an AVX2-only EPYC (bound: 1e-4 m, as the issue asks).
    int8                   AVX2-only EPYC (no VNNI), 3 calibration images: max 2.2 mm, mean 0.8-1.0 mm;
                           8 images, 6 scenes: max 1.6-2.6 mm, mean 0.8-1.3 mm. Xeon with VNNI, 8
                           images: max 3.1 mm, mean 1.2-1.6 mm. OpenVINO's and ONNX Runtime's int8
                           kernels differ from each other by up to 2.2 mm, so the bound must cover both
                           the quantization and the kernel's rounding: max 6 mm, mean 2.5 mm, about 2x
                           the worst measured. A mistake lands well outside: quantizing every op of
                           the body stage (its SMPL-X MatMuls too) gives max 19-23 mm, mean 3.7-7.8 mm,
                           and moves the part boxes by ~570 px.
    bf16                   Xeon with AMX: max 1.6 mm, mean 0.4-0.6 mm (bound 3 mm and 1 mm); running
                           the SMPL-X merge in bf16 as well moves vertices by 5.8 mm. Refused, and its
                           fidelity test skipped, on a CPU without native bf16.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("openvino")

from bodyrt.cli import main  # noqa: E402
from bodyrt.errors import BackendUnavailableError, InputError  # noqa: E402
from bodyrt.runtime import open_bundle  # noqa: E402
from bodyrt.runtime import openvino_backend  # noqa: E402
from bodyrt.runtime.bundle import read_bundle  # noqa: E402

BF16_MAX_MM, BF16_MEAN_MM = 3.0, 1.0
INT8_MAX_MM, INT8_MEAN_MM = 6.0, 2.5


@pytest.fixture(scope="module", autouse=True)
def openvino_cache(tmp_path_factory):
    """A fresh compiled-model cache for this module (shared by its tests)."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("bodyrt-cache")
    patch.setenv("BODYRT_CACHE_DIR", str(cache))
    yield cache / "openvino"
    patch.undo()


@pytest.fixture(scope="module")
def scenes(demo_files):
    from bodyrt.export.fixtures.scenes import sample_scene

    return [sample_scene(demo_files[1], seed=seed, size=(720, 1280)) for seed in (0, 1)]


# linked_copy and the session's quantized_bundle: tests/conftest.py (shared with tests/test_capi_native.py)


@pytest.fixture(scope="module")
def comparison(quantized_bundle, scenes):
    from bodyrt.compare import compare_precisions

    return compare_precisions(quantized_bundle, scenes, backend="openvino", precisions=["bf16", "int8"],
                              threads=2, repeats=1)


def test_fp32_matches_onnxruntime(bundle_dir, scenes):
    onnxruntime = open_bundle(bundle_dir, backend="onnxruntime")
    openvino = open_bundle(bundle_dir, backend="openvino", precision="fp32")
    image, box = scenes[0]
    two_people = np.concatenate([box, box + np.array([[-150, 20, -150, 20]], dtype=np.float32)])
    for boxes in (box, two_people):  # one person: static-shape graphs; two: the dynamic ones
        ours = openvino(image, boxes)
        theirs = onnxruntime(image, boxes).outputs
        assert ours.info == {"backend": "openvino", "precision": "fp32",
                             "stage_precisions": {"body": "fp32", "hand": "fp32", "face": "fp32", "merge": "fp32"}}
        for key in ("vertices", "joints", "body_pose", "right_hand_pose", "left_hand_pose", "jaw_pose",
                    "expression", "pinhole_translation"):
            np.testing.assert_allclose(ours.outputs[key], theirs[key], atol=1e-4, rtol=0, err_msg=key)
        np.testing.assert_allclose(ours.outputs["part_boxes"], theirs["part_boxes"], atol=1e-2, rtol=0)


def test_fp32_is_asked_for_explicitly(bundle_dir):
    """OpenVINO's default on a bf16-capable CPU is bf16; fp32 must not silently become it."""
    specs = read_bundle(bundle_dir).stage("hand").inputs
    runner = openvino_backend.OpenVinoRunner(bundle_dir / "hand.onnx", precision="fp32", input_specs=specs).activate()
    compiled = runner.compiled["people1"][0]
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert runner.precision_ran == "fp32"


def this_cpu() -> tuple[bool, str]:
    """(native bf16?, the CPU's name and OpenVINO capabilities) of the machine running the tests."""
    import openvino

    core = openvino.Core()
    capabilities = openvino_backend.cpu_capabilities(core)
    return "BF16" in capabilities, f"{core.get_property('CPU', 'FULL_DEVICE_NAME')}, OpenVINO reports {capabilities}"


NATIVE_BF16, CPU_DESCRIPTION = this_cpu()
needs_native_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason=f"bf16 fidelity needs a CPU with native bf16 (AVX512-BF16 or AMX); this one "
                            f"({CPU_DESCRIPTION}) has none, so bf16 is refused here (test_bf16_is_refused_on_this_cpu)")


@needs_native_bf16
def test_bf16_stays_within_tolerance_and_keeps_merge_fp32(comparison):
    bf16 = comparison["precisions"]["bf16"]
    assert bf16["stage_precisions"] == {"body": "bf16", "hand": "bf16", "face": "bf16", "merge": "fp32"}
    assert 0.0 < bf16["vertices_max_mm"] <= BF16_MAX_MM
    assert bf16["vertices_mean_mm"] <= BF16_MEAN_MM
    assert comparison["precisions"]["fp32"]["vertices_max_mm"] == 0.0


def test_int8_variant_is_in_the_manifest_and_within_tolerance(quantized_bundle, bundle_dir, comparison):
    manifest = read_bundle(quantized_bundle).manifest  # verifies every hash, the int8 graphs' too
    variant = manifest.variants.int8
    assert variant.stages == {"body": "body.int8.onnx", "hand": "hand.int8.onnx", "face": "face.int8.onnx"}
    assert variant.calibration.images == 3
    assert set(manifest.files) >= set(variant.stages.values())
    assert read_bundle(bundle_dir).manifest.variants.int8 is None  # the session bundle is untouched
    int8 = comparison["precisions"]["int8"]
    assert int8["stage_precisions"] == {"body": "int8", "hand": "int8", "face": "int8", "merge": "fp32"}
    assert 0.0 < int8["vertices_max_mm"] <= INT8_MAX_MM
    assert int8["vertices_mean_mm"] <= INT8_MEAN_MM


def test_int8_quantizes_convolutions_only(quantized_bundle):
    """Every Conv reads int8 weights; no MatMul or Gemm (the SMPL-X layer, the regressors) reads a
    dequantized tensor, so the rotation and skinning math stays fp32."""
    import onnx

    body = onnx.load(str(quantized_bundle / "body.int8.onnx"))
    dequantized = {node.output[0] for node in body.graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in body.graph.node if node.op_type == "Conv"]
    assert convolutions and all(node.input[1] in dequantized for node in convolutions)
    matrix_products = [node for node in body.graph.node if node.op_type in ("MatMul", "Gemm", "Einsum")]
    assert matrix_products and not any(set(node.input) & dequantized for node in matrix_products)


def test_int8_without_a_variant_says_how_to_make_one(bundle_dir):
    from bodyrt.errors import BundleError

    with pytest.raises(BundleError, match="bodyrt quantize"):
        open_bundle(bundle_dir, backend="openvino", precision="int8")


def test_compiled_models_are_cached_per_precision(bundle_dir, tmp_path, caplog):
    hand = bundle_dir / "hand.onnx"
    feeds = {"hand_crops": np.random.default_rng(0).normal(size=(1, 2, 3, 224, 224)).astype(np.float32),
             "hand_starts": np.zeros((1, 2, 109), np.float32)}
    specs = read_bundle(bundle_dir).stage("hand").inputs

    def runner(precision="fp32"):
        return openvino_backend.OpenVinoRunner(hand, precision=precision, input_specs=specs, cache_dir=tmp_path,
                                               model_sha256="test").activate()

    first = runner().infer(feeds)["hand_params"]
    blobs = sorted(tmp_path.glob("*.blob"))
    assert len(blobs) == 1
    np.testing.assert_array_equal(runner().infer(feeds)["hand_params"], first)  # from the cache
    assert sorted(tmp_path.glob("*.blob")) == blobs
    runner("int8")  # another precision: another key
    assert len(list(tmp_path.glob("*.blob"))) == 2
    blobs[0].write_bytes(b"truncated")
    np.testing.assert_array_equal(runner().infer(feeds)["hand_params"], first)
    assert "recompiling" in caplog.text


def test_missing_openvino_gives_an_install_hint(bundle_dir, monkeypatch):
    from bodyrt.runtime.backends import available_backends

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    assert "openvino" not in available_backends()
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        open_bundle(bundle_dir, backend="openvino")


def test_cpu_without_bf16_is_refused_not_downgraded(bundle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core: ["FP32", "INT8", "BIN"])
    with pytest.raises(BackendUnavailableError, match="native bf16"):
        open_bundle(bundle_dir, backend="openvino", precision="bf16")
    image = tmp_path / "person.png"
    from bodyrt.images import save_png

    save_png(image, np.full((64, 48, 3), 90, np.uint8))
    code = main(["run", str(image), "--bundle", str(bundle_dir), "--backend", "openvino", "--precision", "bf16",
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "native bf16" in error[-1]


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bf16; the refusal is tested on a stubbed CPU "
                                         "(test_cpu_without_bf16_is_refused_not_downgraded)")
def test_bf16_is_refused_on_this_cpu(bundle_dir, comparison):
    """The real CPU, no stub: bf16 is refused before anything compiles, and compare reports it as
    skipped with the reason instead of running it at another precision."""
    with pytest.raises(BackendUnavailableError, match="native bf16") as refused:
        open_bundle(bundle_dir, backend="openvino", precision="bf16")
    assert "--precision fp32" in str(refused.value)
    assert "bf16" not in comparison["precisions"]
    assert "native bf16" in comparison["skipped"]["bf16"]


def test_bf16_on_onnxruntime_is_refused(bundle_dir):
    with pytest.raises(InputError, match="openvino backend only"):
        open_bundle(bundle_dir, backend="onnxruntime", precision="bf16")


def test_calibration_folders_without_usable_images(bundle_dir, tmp_path, capsys):
    from bodyrt.export.quantize import quantize_bundle

    with pytest.raises(InputError, match="does not exist"):
        quantize_bundle(bundle_dir, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no calibration images"):
        quantize_bundle(bundle_dir, empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "person.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    code = main(["quantize", "--bundle", str(bundle_dir), "--calibration", str(broken)])
    assert code == 1
    assert "none of the 1 images could be used" in capsys.readouterr().err
    assert read_bundle(bundle_dir).manifest.variants.int8 is None


def test_backend_module_does_not_import_torch():
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        import bodyrt.runtime.openvino_backend, bodyrt.runtime.pipeline
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_bench_runs_each_backend_at_each_precision_it_supports(bundle_dir, capsys):
    from bodyrt.bench import run_bench

    report = run_bench(bundle=bundle_dir, backends=["onnxruntime", "openvino"], precisions=["fp32", "bf16"],
                       repeats=1, warmup=0, memory=False)
    summary = report["summary"]
    errors = capsys.readouterr().err
    assert "skipping onnxruntime bf16" in errors
    assert {"onnxruntime", "openvino"} <= set(summary) and "onnxruntime-bf16" not in summary
    if NATIVE_BF16:
        deviation = summary["openvino-bf16"]["vertex_deviation_mm"]
        assert deviation["against"] == "openvino"
        assert 0.0 < deviation["max_mm"] <= BF16_MAX_MM
    else:
        assert "skipping openvino bf16" in errors and "native bf16" in errors
        assert "openvino-bf16" not in summary
    assert "vertex_deviation_mm" not in summary["openvino"]


def test_compare_command_writes_the_report(quantized_bundle, scenes, tmp_path, capsys):
    import json

    from bodyrt.images import save_png

    image, box = scenes[1]
    save_png(tmp_path / "photo.png", image)
    code = main(["compare", str(tmp_path / "photo.png"), "--bundle", str(quantized_bundle), "--precision", "int8",
                 "--box", *map(str, box[0]), "--repeats", "1", "--json", str(tmp_path / "report.json")])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["precisions"]) == {"fp32", "int8"} and report["scenes"] == 1
    assert 0.0 < report["precisions"]["int8"]["vertices_max_mm"] <= INT8_MAX_MM
    assert "re-measure" in capsys.readouterr().out
