"""The native libbodyrt (C++ on OpenVINO, no Python): what tests/test_capi.py does not cover.

Parity with the Python runtime on the same backend (OpenVINO, fp32 at 1e-5 for every output) on the
golden cases of tests/data/golden_expose and on two people in one image; bf16 and int8 within the
tolerances the Python runtime is held to (tests/test_openvino.py); no libpython anywhere in the
library's dependencies; the pkg-config and CMake files; the manifest reader's messages; bad input
from C (tampered bundle, a manifest of another format version, absurd sizes, concurrent
create/destroy); and the same C programs under AddressSanitizer and UndefinedBehaviorSanitizer.
"""

import ctypes
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bodyrt.runtime import open_bundle
from bodyrt.runtime.capi.build import compile_command
from bodyrt.runtime.capi.native_build import build_tools

REPO = Path(__file__).resolve().parents[1]
CAPI_CHECK = REPO / "tests" / "c" / "capi_check.c"
LSAN_SUPPRESSIONS = REPO / "tests" / "c" / "lsan_openvino.supp"
GOLDEN = REPO / "tests" / "data" / "golden_expose"
STRICT_FLAGS = ["-Wall", "-Wextra", "-Werror", "-std=c11", "-pedantic"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
OUTPUT_NAMES = ["vertices", "joints", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
                "jaw_pose", "betas", "expression", "camera_scale", "camera_translation", "pinhole_translation",
                "focal_length", "part_boxes", "crop_transforms"]
FP32_TOLERANCE = 1e-5
# The Python runtime's bounds against fp32 (tests/test_openvino.py), millimetres of vertex distance.
BF16_MAX_MM, BF16_MEAN_MM = 3.0, 1.0
INT8_MAX_MM, INT8_MEAN_MM = 6.0, 2.5


def this_cpu() -> tuple[bool, str]:
    import openvino

    core = openvino.Core()
    capabilities = [str(item) for item in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    return "BF16" in capabilities, f"{core.get_property('CPU', 'FULL_DEVICE_NAME')}, OpenVINO reports {capabilities}"


NATIVE_BF16, CPU_DESCRIPTION = this_cpu()


def run_program(command, env=None, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else dict(os.environ))
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def native_dir(capi_build):
    return capi_build("native")


@pytest.fixture(scope="module")
def capi_check(native_dir, tmp_path_factory):
    program = tmp_path_factory.mktemp("native-check") / "capi_check"
    run_program(compile_command(CAPI_CHECK, program, native_dir, extra_flags=STRICT_FLAGS))
    return program


def c_outputs(program, bundle, image, boxes, work: Path, precision=None, env=None) -> dict:
    """Run capi_check outputs: name -> array, for the RGB (padded rows) and BGR (packed) runs."""
    work.mkdir(parents=True, exist_ok=True)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    np.ascontiguousarray(image).tofile(work / "image.rgb")
    boxes.tofile(work / "boxes.f32")
    out = work / "out"
    out.mkdir(exist_ok=True)
    height, width = image.shape[:2]
    run_program([program, "outputs", bundle, work / "image.rgb", width, height, work / "boxes.f32", len(boxes), out,
                 *([precision] if precision else [])], env=env)
    shapes = {line.split()[0]: tuple(int(size) for size in line.split()[1:])
              for line in (out / "shapes.txt").read_text().splitlines()}
    return {order: {name: np.fromfile(out / f"{order}_{name}.f32", dtype=np.float32).reshape(shapes[name])
                    for name in shapes}
            for order in ("rgb", "bgr")}


def golden_case(name: str):
    """(image (H, W, 3) uint8, the official person box (4,)) of a golden case."""
    from bodyrt.images import load_image

    golden = dict(np.load(GOLDEN / f"official_{name}.npz"))
    return load_image(GOLDEN / str(golden["image_path"])), np.asarray(golden["bbox"], dtype=np.float32)


def assert_all_outputs_close(ours: dict, theirs: dict, tolerance: float, label: str):
    assert sorted(ours) == sorted(OUTPUT_NAMES), label
    for name in OUTPUT_NAMES:
        assert ours[name].shape == theirs[name].shape, (label, name)
        np.testing.assert_allclose(ours[name], theirs[name], atol=tolerance, rtol=0, err_msg=f"{label} {name}")


def vertex_distances_mm(ours, theirs) -> np.ndarray:
    return np.linalg.norm(ours.astype(np.float64) - theirs.astype(np.float64), axis=-1) * 1000.0


# ---------------------------------------------------------------- parity with the Python runtime

@pytest.fixture(scope="module")
def golden_openvino(golden_bundle):
    pipeline = open_bundle(golden_bundle, backend="openvino", threads=2, precision="fp32")
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("case", ["scene_seed11", "astronaut", "scene_seed11_two_people"])
def test_golden_cases_match_the_python_runtime_within_1e_5(case, capi_check, golden_bundle, golden_openvino,
                                                           tmp_path):
    image, box = golden_case(case.removesuffix("_two_people"))
    boxes = box[None]
    if case.endswith("two_people"):  # another person first (the dynamic person axis), as test_golden_expose
        boxes = np.stack([box + np.float32([-150.0, 20.0, -150.0, 20.0]), box])
    expected = golden_openvino(image, boxes).outputs
    ours = c_outputs(capi_check, golden_bundle, image, boxes, tmp_path)
    for order in ("rgb", "bgr"):
        assert_all_outputs_close(ours[order], expected, FP32_TOLERANCE, f"{case} {order}")
    # the outputs are not trivially equal: the two people differ
    if len(boxes) == 2:
        assert np.abs(ours["rgb"]["vertices"][0] - ours["rgb"]["vertices"][1]).max() > 1e-3


@pytest.fixture(scope="module")
def demo_scene(demo_files):
    """The 720p synthetic scene the Python runtime's bf16 and int8 bounds were measured on."""
    from bodyrt.export.fixtures.scenes import sample_scene

    return sample_scene(demo_files[1], seed=0, size=(720, 1280))


@pytest.mark.skipif(not NATIVE_BF16, reason=f"bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one "
                                            f"({CPU_DESCRIPTION}) has none")
def test_bf16_within_the_python_runtimes_bounds(capi_check, bundle_dir, demo_scene, tmp_path):
    image, box = demo_scene
    fp32 = open_bundle(bundle_dir, backend="openvino", precision="fp32")(image, box).outputs
    ours = c_outputs(capi_check, bundle_dir, image, box, tmp_path, precision="bf16")["rgb"]
    distances = vertex_distances_mm(ours["vertices"], fp32["vertices"])
    assert 0.0 < distances.max() <= BF16_MAX_MM  # > 0: it did run at bf16
    assert distances.mean() <= BF16_MEAN_MM


def test_int8_within_the_python_runtimes_bounds(capi_check, bundle_dir, quantized_bundle, demo_scene, tmp_path):
    image, box = demo_scene
    fp32 = open_bundle(bundle_dir, backend="openvino", precision="fp32")(image, box).outputs
    int8 = open_bundle(quantized_bundle, backend="openvino", precision="int8")(image, box).outputs
    ours = c_outputs(capi_check, quantized_bundle, image, box, tmp_path, precision="int8")["rgb"]
    distances = vertex_distances_mm(ours["vertices"], fp32["vertices"])
    assert 0.0 < distances.max() <= INT8_MAX_MM
    assert distances.mean() <= INT8_MEAN_MM
    # the same quantized graphs on the same OpenVINO: the Python runtime's int8 result
    assert vertex_distances_mm(ours["vertices"], int8["vertices"]).max() <= 0.01


def test_fp32_is_f32_even_where_the_cpu_has_bf16(capi_check, bundle_dir, demo_scene, tmp_path):
    """OpenVINO's default on a bf16 CPU is bf16; the library sets the hint, so fp32 matches ONNX Runtime."""
    image, box = demo_scene
    onnxruntime = open_bundle(bundle_dir, backend="onnxruntime")(image, box).outputs
    ours = c_outputs(capi_check, bundle_dir, image, box, tmp_path)["rgb"]
    assert vertex_distances_mm(ours["vertices"], onnxruntime["vertices"]).max() <= 0.01  # bf16 moves them by mm


# ---------------------------------------------------------------- the library and its files

def test_no_libpython_and_only_the_c_api_exported(native_dir):
    library = native_dir / "libbodyrt.so"
    for binary in (library, native_dir / "minimal"):
        linked = run_program(["ldd", binary]).stdout
        assert "libpython" not in linked, linked
        assert "libopenvino.so" in linked and "not found" not in linked, linked
    needed = run_program(["readelf", "-d", library]).stdout
    assert not re.search(r"NEEDED.*python", needed, re.I), needed
    exported = run_program(["nm", "-D", "--defined-only", library]).stdout
    functions = sorted(line.split()[-1] for line in exported.splitlines() if " T " in line)
    header_functions = sorted(re.findall(r"BODYRT_API [^(]*?\b(bodyrt_\w+)\(", (native_dir / "bodyrt.h").read_text()))
    assert functions == header_functions


def test_pkg_config_and_cmake_files_build_the_example(native_dir, bundle_dir, tmp_path):
    pc = dict(re.findall(r"^(\w+)=(.*)$", (native_dir / "bodyrt.pc").read_text(), re.M))
    fields = dict(re.findall(r"^(\w+): (.*)$", (native_dir / "bodyrt.pc").read_text(), re.M))
    flags = " ".join([fields["Cflags"], fields["Libs"]]).replace("${libdir}", pc["libdir"]).replace(
        "${includedir}", pc["includedir"]).split()
    program = tmp_path / "minimal-pc"
    run_program(["gcc", *STRICT_FLAGS, REPO / "runtime" / "capi" / "minimal.c", "-o", program, *flags])
    assert "10475 vertices" in run_program([program, bundle_dir], env={}).stdout

    tools = build_tools()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "runtime" / "capi" / "minimal.c", project / "minimal.c")
    (project / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.16)\nproject(host C)\n"
                                            "find_package(bodyrt REQUIRED)\nadd_executable(minimal minimal.c)\n"
                                            "target_link_libraries(minimal PRIVATE bodyrt::bodyrt)\n")
    run_program([tools["cmake"], "-S", project, "-B", project / "build", "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}", f"-Dbodyrt_DIR={native_dir}"])
    run_program([tools["cmake"], "--build", project / "build"])
    assert "10475 vertices" in run_program([project / "build" / "minimal", bundle_dir], env={}).stdout


def load_library(native_dir):
    library = ctypes.CDLL(str(native_dir / "libbodyrt.so"))
    library.bodyrt_last_error.restype = ctypes.c_char_p
    return library


def create_status(library, bundle) -> tuple[int, str]:
    handle = ctypes.c_uint64(7)
    status = library.bodyrt_create(str(bundle).encode(), None, ctypes.byref(handle))
    assert (handle.value == 0) == (status != 0)
    if status == 0:
        assert library.bodyrt_destroy(handle) == 0
    return status, library.bodyrt_last_error().decode()


def manifest_copy(bundle_dir, target: Path, edit) -> Path:
    """The bundle as hard links, with an edited copy of its manifest."""
    shutil.copytree(bundle_dir, target, copy_function=os.link)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").unlink()
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


# edit of the manifest -> the message fragment naming what is wrong
MANIFEST_EDITS = {
    "no_steps": (lambda m: m.pop("steps"), "manifest.json: steps is missing"),
    "crop_size_text": (lambda m: m["steps"][0].update(crop_size="256"), "steps[0].crop_size must be an integer"),
    "unknown_op": (lambda m: m["steps"][1].update(op="resample"), "steps[1].op is 'resample'"),
    "two_stds": (lambda m: m["preprocessing"].update(std=[0.2, 0.2]), "preprocessing.std must hold 3 numbers"),
    "gapped_parts": (lambda m: m["steps"][2].update(parts=[0, 2]), "steps[2].parts must be consecutive"),
    "face_out_of_range": (lambda m: m["mesh"]["faces"][0].__setitem__(0, 10**6), "mesh.faces must hold vertex"),
    "unlisted_stage_file": (lambda m: m["stages"][0].update(file="other.onnx"), "'other.onnx' is not listed"),
    "file_outside": (lambda m: m["files"].update({"../x.onnx": "00"}), "files must map plain file names"),
    "format_1": (lambda m: m.update(format_version=1), "bundle format version 1, this libbodyrt reads version 2"),
    "format_1_outputs": (lambda m: m["steps"][0].update(outputs=["body_crops", "crop_transforms"]),
                         "steps[0].outputs is an unknown key"),
    "unknown_top_level": (lambda m: m.update(extra=1), "extra is an unknown key"),
    "no_pixel_scale": (lambda m: m["preprocessing"].pop("pixel_scale"), "preprocessing.pixel_scale is missing"),
    "no_pinhole_output": (lambda m: m["steps"][-1].pop("translation_output"), "steps[7].translation_output is missing"),
    "step_name_twice": (lambda m: m["steps"][4].update(name="hand_crops"), "steps[4].name 'hand_crops' is used twice"),
    "not_a_bundle": (lambda m: m.update(format="other"), "not a bodyrt bundle manifest"),
}


def test_manifest_errors_name_the_key(native_dir, bundle_dir, tmp_path):
    library = load_library(native_dir)  # the native library loads into a Python process
    for case, (edit, fragment) in MANIFEST_EDITS.items():
        status, message = create_status(library, manifest_copy(bundle_dir, tmp_path / case, edit))
        assert status == 4, (case, status, message)  # BODYRT_ERROR_BUNDLE
        assert message.startswith("bodyrt_create: ") and fragment in message, (case, message)


# ---------------------------------------------------------------- bad input from C, sanitizers

def tampered_bundles(bundle_dir, tmp_path) -> tuple[Path, Path]:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered, copy_function=os.link)
    face = tampered / "face.onnx"
    data = bytearray(face.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in a fresh file (never through the link)
    face.unlink()
    face.write_bytes(bytes(data))
    other_version = manifest_copy(bundle_dir, tmp_path / "other-version", lambda m: m.update(format_version=99))
    return tampered, other_version


# case -> (status, the message must contain this)
HARDENING = {
    "create_tampered_bundle": ("BUNDLE", "face.onnx: sha256 does not match the manifest"),
    "create_other_version": ("BUNDLE", "bundle format version 99, this libbodyrt reads version 2"),
    "create_null_precision": ("INVALID_ARGUMENT", "options->precision is NULL"),
    "create_unknown_precision": ("INVALID_ARGUMENT", "precision must be fp32, bf16 or int8, got 'fp64'"),
    "run_int_max_image": ("INVALID_ARGUMENT", "width 2147483647 is above the largest width"),
    "run_int_max_height": ("INVALID_ARGUMENT", "larger than any address space"),
    "run_int_max_stride": ("INVALID_ARGUMENT", "larger than any address space"),
    "run_nan_box": ("INVALID_ARGUMENT", "person box 0 (x0, y0, x1, y1) = (80, nan, 240, 216) is not finite"),
    "run_outside_box": ("INVALID_ARGUMENT", "person box 0 (x0, y0, x1, y1) = (330, 0, 370, 40) is entirely outside "
                                            "the 320x240 image"),
    "run_huge_box": ("INVALID_ARGUMENT", "is too large: its crop rectangle reaches beyond"),
    "run_second_box_empty": ("INVALID_ARGUMENT", "person box 1 (x0, y0, x1, y1) = (5, 5, 5, 5) is empty"),
    "run_one_pixel_image": ("OK", ""),
    "destroy_twice": ("INVALID_HANDLE", "bodyrt_destroy: pipeline"),
    "churn": ("OK", "3 threads x 2 create/run/destroy rounds"),
}


@pytest.fixture(scope="module")
def noise_image(tmp_path_factory):
    width, height = 320, 240
    path = tmp_path_factory.mktemp("native-image") / "noise.rgb"
    np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8).tofile(path)
    return path, width, height


def check_hardening(program, bundle_dir, noise_image, tmp_path, env=None):
    tampered, other_version = tampered_bundles(bundle_dir, tmp_path)
    image, width, height = noise_image
    printed = run_program([program, "hardening", bundle_dir, tampered, other_version, image, width, height],
                          env=env).stdout
    cases = {line.split("\t")[0]: line.split("\t") for line in printed.splitlines()}
    assert sorted(cases) == sorted(HARDENING)
    for name, (status, fragment) in HARDENING.items():
        _, found_status, _, message = cases[name]
        assert found_status == ("BODYRT_OK" if status == "OK" else f"BODYRT_ERROR_{status}"), (name, cases[name])
        assert fragment in message, (name, message)


def test_hardening_from_c(capi_check, bundle_dir, noise_image, tmp_path):
    check_hardening(capi_check, bundle_dir, noise_image, tmp_path)


@pytest.fixture(scope="module")
def sanitized_check(capi_build, tmp_path_factory):
    out = capi_build("sanitize")
    program = tmp_path_factory.mktemp("sanitized-check") / "capi_check"
    run_program(compile_command(CAPI_CHECK, program, out, extra_flags=[*STRICT_FLAGS, *SANITIZE_FLAGS]))
    return program


def sanitizer_env() -> dict:
    # TBB_ENABLE_SANITIZERS: TBB loads its hwloc binding without RTLD_DEEPBIND, which ASan refuses
    return {**os.environ, "TBB_ENABLE_SANITIZERS": "1",
            "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=24",
            "LSAN_OPTIONS": f"suppressions={LSAN_SUPPRESSIONS}:print_suppressions=0:exitcode=25"}


def test_sanitizers_report_nothing(sanitized_check, bundle_dir, demo_scene, noise_image, tmp_path):
    """The C programs' bad input, concurrent create/destroy and a two-person run under ASan (leaks
    included) and UBSan. (The `threads` mode stays out: it adds minutes under ASan and no new code path.)"""
    env = sanitizer_env()
    image, width, height = noise_image
    bad_bundle = tmp_path / "bad-bundle"
    bad_bundle.mkdir()
    (bad_bundle / "manifest.json").write_text("{ not json")
    done = run_program([sanitized_check, "errors", bundle_dir, bad_bundle, image, width, height], env=env)
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, done.stderr[-4000:]
    check_hardening(sanitized_check, bundle_dir, noise_image, tmp_path / "hardening", env=env)
    scene, box = demo_scene
    two_people = np.concatenate([box, box + np.float32([[-150, 20, -150, 20]])])
    ours = c_outputs(sanitized_check, bundle_dir, scene, two_people, tmp_path / "outputs", env=env)["rgb"]
    assert ours["vertices"].shape == (2, 10475, 3) and np.all(np.isfinite(ours["vertices"]))
