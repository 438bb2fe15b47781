"""libbodyrt, the C API: both builds (native C++ on OpenVINO, and embedded Python), each built once per
session with `bodyrt build-capi`, driven from C by the same tests/c/capi_check.c and examples/c/minimal.c
in a clean environment, and checked against the Python runtime on the same backend.

The native build's own checks (golden parity, bf16/int8, no libpython, hardening, sanitizers) are in
tests/test_capi_native.py."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bodyrt import __version__
from bodyrt.cli import main
from bodyrt.runtime import open_bundle
from bodyrt.runtime.capi.build import compile_command

REPO = Path(__file__).resolve().parents[1]
CAPI_CHECK = REPO / "tests" / "c" / "capi_check.c"
EXAMPLE = REPO / "examples" / "c" / "minimal.c"
STRICT_FLAGS = ["-Wall", "-Wextra", "-Werror", "-std=c11", "-pedantic"]

# No PATH, no HOME, no PYTHON*: the library must find its Python environment by itself.
CLEAN_ENV = {}
# A host whose variables point at another Python: they must be ignored.
HOSTILE_ENV = {"PYTHONHOME": "/nonexistent/python-home", "PYTHONPATH": "{evil}"}

OUTPUT_NAMES = ["vertices", "joints", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
                "jaw_pose", "betas", "expression", "camera_scale", "camera_translation", "pinhole_translation",
                "focal_length", "part_boxes", "crop_transforms"]


def run_program(command, env=CLEAN_ENV, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# kind -> (the Python runtime's backend it must match, the tolerance)
KINDS = {"native": ("openvino", 1e-5), "embedded": ("onnxruntime", 1e-6)}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def capi_dir(kind, capi_build, tmp_path_factory):
    """libbodyrt.so, bodyrt.h and the example from the documented command, and capi_check built against them."""
    out = capi_build(kind)
    program = tmp_path_factory.mktemp(f"capi-check-{kind}") / "capi_check"
    run_program(compile_command(CAPI_CHECK, program, out, extra_flags=STRICT_FLAGS), env=dict(os.environ))
    shutil.copy(program, out / "capi_check")
    return out


@pytest.fixture(scope="module")
def runtime(bundle_dir, kind):
    return open_bundle(bundle_dir, backend=KINDS[kind][0], threads=2)


@pytest.fixture(scope="module")
def noise_image(tmp_path_factory):
    """(path, width, height) of a packed 320 x 240 RGB file of seeded noise."""
    width, height = 320, 240
    path = tmp_path_factory.mktemp("capi-image") / "noise.rgb"
    np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8).tofile(path)
    return path, width, height


def c_snippets(markdown: str) -> list[str]:
    return re.findall(r"```c\n(.*?)```", markdown, flags=re.S)


def test_build_capi_writes_the_library_header_and_a_working_example(capi_dir, bundle_dir, tmp_path):
    for name in ["libbodyrt.so", "bodyrt.h", "minimal.c", "minimal"]:
        assert (capi_dir / name).is_file(), name
    assert (capi_dir / "bodyrt.h").read_text() == (REPO / "runtime" / "capi" / "bodyrt.h").read_text()
    header = (REPO / "runtime" / "capi" / "bodyrt.h").resolve()
    copies = [path for path in REPO.glob("*/**/bodyrt.h")
              if path.resolve() != header and path.relative_to(REPO).parts[0] != "build"]  # setuptools' build/
    assert not copies, f"the header has one home, runtime/capi/bodyrt.h; other copies: {copies}"
    evil = tmp_path / "evil"
    (evil / "bodyrt").mkdir(parents=True)
    (evil / "bodyrt" / "__init__.py").write_text("raise ImportError('a bodyrt from the host PYTHONPATH')\n")
    hostile = {name: value.format(evil=evil) for name, value in HOSTILE_ENV.items()}
    for env in [CLEAN_ENV, hostile]:
        printed = run_program([capi_dir / "minimal", bundle_dir], env=env).stdout
        assert printed.startswith(f"bodyrt {__version__}: 10475 vertices"), printed


def test_a_process_that_already_runs_python_is_refused_not_crashed(capi_dir, kind, bundle_dir):
    """The embedded library refuses; the native one has no Python of its own and just works."""
    script = f"""
import ctypes, sys
import numpy  # the interpreter is busy: extension modules loaded, capsules looked up
lib = ctypes.CDLL({str(capi_dir / "libbodyrt.so")!r})
lib.bodyrt_last_error.restype = ctypes.c_char_p
handle = ctypes.c_uint64(7)
status = lib.bodyrt_create({str(bundle_dir).encode()!r}, None, ctypes.byref(handle))
print(status, handle.value, lib.bodyrt_last_error().decode())
"""
    printed = run_program([sys.executable, "-c", script], env=dict(os.environ)).stdout
    status, handle, message = (printed.strip().split(" ", 2) + [""])[:3]
    if kind == "embedded":
        assert (int(status), int(handle)) == (6, 0)  # BODYRT_ERROR_PYTHON, no pipeline
        assert "already runs Python" in message
    else:
        assert (int(status), message) == (0, "") and int(handle) > 0


def test_readme_snippet_is_the_example_and_compiles_with_warnings_as_errors(capi_dir, bundle_dir, tmp_path):
    example = EXAMPLE.read_text()
    pasted = [snippet for snippet in c_snippets((REPO / "README.md").read_text()) if "bodyrt_create" in snippet]
    assert pasted and all(snippet == example for snippet in pasted), \
        "README.md's C snippet differs from examples/c/minimal.c"
    program = tmp_path / "minimal"
    run_program(compile_command(EXAMPLE, program, capi_dir, extra_flags=STRICT_FLAGS), env=dict(os.environ))
    assert "10475 vertices" in run_program([program, bundle_dir]).stdout


def test_c_outputs_match_the_python_runtime(capi_dir, kind, bundle_dir, demo_files, runtime, tmp_path):
    from bodyrt.export.fixtures.scenes import sample_scene

    image, box = sample_scene(demo_files[1], seed=1, size=(360, 480))
    boxes = np.concatenate([box, box + np.float32([-60, 10, -60, 10])]).astype(np.float32)
    height, width = image.shape[:2]
    image.tofile(tmp_path / "image.rgb")
    boxes.tofile(tmp_path / "boxes.f32")
    out = tmp_path / "out"
    out.mkdir()
    run_program([capi_dir / "capi_check", "outputs", bundle_dir, tmp_path / "image.rgb", width, height,
                 tmp_path / "boxes.f32", len(boxes), out])

    expected = runtime(image, boxes).outputs
    shapes = {line.split()[0]: tuple(int(size) for size in line.split()[1:])
              for line in (out / "shapes.txt").read_text().splitlines()}
    assert sorted(shapes) == sorted(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        assert shapes[name] == expected[name].shape, name
        for order in ["rgb", "bgr"]:  # RGB rows padded by 7 bytes; BGR rows packed
            ours = np.fromfile(out / f"{order}_{name}.f32", dtype=np.float32).reshape(shapes[name])
            np.testing.assert_allclose(ours, expected[name], atol=KINDS[kind][1], rtol=0, err_msg=f"{order} {name}")
    faces = np.fromfile(out / "faces.i32", dtype=np.int32).reshape(-1, 3)
    np.testing.assert_array_equal(faces, runtime.faces)


# case -> (status, the message must contain this); "" for no message.
EXPECTED_ERRORS = {
    "create_null_bundle_dir": ("INVALID_ARGUMENT", "bodyrt_create: bundle_dir is NULL"),
    "create_missing_bundle": ("BUNDLE", "/nonexistent/bundle"),
    "create_bad_bundle": ("BUNDLE", "manifest.json"),
    "create_null_pipeline": ("INVALID_ARGUMENT", "pipeline is NULL"),
    "create_zero_threads": ("INVALID_ARGUMENT", "options->threads must be > 0, got 0"),
    "create_negative_threads": ("INVALID_ARGUMENT", "options->threads must be > 0, got -3"),
    "create_too_many_threads": ("INVALID_ARGUMENT", "threads must be between 1 and"),
    "create_null_backend": ("INVALID_ARGUMENT", "options->backend is NULL"),
    "create_unknown_backend": ("BACKEND_UNAVAILABLE", "'no-such-backend'"),
    "run_null_pixels": ("INVALID_ARGUMENT", "bodyrt_run: pixels is NULL"),
    "run_zero_width": ("INVALID_ARGUMENT", "width must be > 0, got 0"),
    "run_negative_height": ("INVALID_ARGUMENT", "height must be > 0, got -5"),
    "run_short_stride": ("INVALID_ARGUMENT", "row_stride 959 is smaller than a row of 320 pixels (960 bytes)"),
    "run_negative_stride": ("INVALID_ARGUMENT", "row_stride -960 is smaller"),
    "run_huge_image": ("INVALID_ARGUMENT", "is too large (at most 100 million pixels)"),
    "run_bad_channel_order": ("INVALID_ARGUMENT", "channel_order 7"),
    "run_null_boxes": ("INVALID_ARGUMENT", "boxes is NULL"),
    "run_zero_persons": ("INVALID_ARGUMENT", "person_count must be > 0, got 0"),
    "run_negative_persons": ("INVALID_ARGUMENT", "person_count must be > 0, got -2"),
    "run_null_result": ("INVALID_ARGUMENT", "result is NULL"),
    "run_inverted_box": ("INVALID_ARGUMENT", "person box 0"),
    "pipeline_last_error": ("OK", ""),
    "pipeline_last_error_truncated": ("OK", ""),
    "pipeline_last_error_null_message": ("INVALID_ARGUMENT", "message is NULL"),
    "pipeline_last_error_zero_capacity": ("INVALID_ARGUMENT", "capacity must be > 0"),
    "copy_too_small": ("BUFFER_TOO_SMALL", "capacity 16 is too small for vertices (1, 10475, 3): it needs 31425"),
    "copy_betas_too_small": ("BUFFER_TOO_SMALL", "capacity 9 is too small for betas (1, 10)"),
    "copy_betas": ("OK", ""),
    "copy_null_buffer": ("INVALID_ARGUMENT", "buffer is NULL"),
    "copy_bad_output": ("INVALID_ARGUMENT", "output 99 is not a bodyrt_output value"),
    "result_last_error": ("OK", ""),
    "data_null_data": ("INVALID_ARGUMENT", "data is NULL"),
    "data_null_count": ("INVALID_ARGUMENT", "count is NULL"),
    "shape_null_shape": ("INVALID_ARGUMENT", "shape is NULL"),
    "shape_null_ndim": ("INVALID_ARGUMENT", "ndim is NULL"),
    "person_count_null": ("INVALID_ARGUMENT", "person_count is NULL"),
    "faces_too_small": ("BUFFER_TOO_SMALL", "it needs 62724"),
    "faces_null_pointer": ("INVALID_ARGUMENT", "faces is NULL"),
    "faces_null_count": ("INVALID_ARGUMENT", "face_count is NULL"),
    "release": ("OK", ""),
    "release_again": ("INVALID_HANDLE", "bodyrt_release: result"),
    "copy_after_release": ("INVALID_HANDLE", "is not held (released, or never made)"),
    "data_after_release": ("INVALID_HANDLE", "is not held"),
    "person_count_after_release": ("INVALID_HANDLE", "is not held"),
    "never_made_result": ("INVALID_HANDLE", "result 123456789 is not held"),
    "release_zero_result": ("OK", ""),
    "destroy": ("OK", ""),
    "destroy_again": ("INVALID_HANDLE", "bodyrt_destroy: pipeline"),
    "run_after_destroy": ("INVALID_HANDLE", "is not open (destroyed, or never created)"),
    "faces_after_destroy": ("INVALID_HANDLE", "is not open"),
    "last_error_after_destroy": ("INVALID_HANDLE", "is not open"),
    "destroy_zero_pipeline": ("OK", ""),
}


def test_bad_input_through_the_c_boundary_gives_codes_and_messages(capi_dir, bundle_dir, noise_image, tmp_path):
    bad_bundle = tmp_path / "bad-bundle"
    bad_bundle.mkdir()
    (bad_bundle / "manifest.json").write_text("{ not json")
    image, width, height = noise_image
    printed = run_program([capi_dir / "capi_check", "errors", bundle_dir, bad_bundle, image, width, height]).stdout
    cases = {}
    for line in printed.splitlines():
        name, status, count, message = line.split("\t")
        cases[name] = (status, int(count), message)

    assert cases.pop("version")[2] == __version__
    assert cases.pop("status_name_99")[0] == "(not a bodyrt_status)"
    # The pipeline's own last error: the latest failed call given it, or one of its results.
    assert "person box 0" in cases.pop("pipeline_last_error_message")[2]
    assert cases.pop("pipeline_last_error_truncated_message")[2] == "bodyrt_"  # 8 bytes with the NUL
    assert "output 99" in cases.pop("result_last_error_message")[2]
    assert sorted(cases) == sorted(EXPECTED_ERRORS)
    for name, (status, fragment) in EXPECTED_ERRORS.items():
        found_status, _, message = cases[name]
        expected_status = "BODYRT_OK" if status == "OK" else f"BODYRT_ERROR_{status}"
        assert found_status == expected_status, (name, cases[name])
        assert fragment in message, (name, message)
        assert (message == "") == (status == "OK"), (name, message)
        if message:
            assert message.startswith("bodyrt_"), message  # names the C function
    # The needed count comes back with BUFFER_TOO_SMALL, and with a copy that fits.
    assert cases["copy_too_small"][1] == 10475 * 3
    assert cases["faces_too_small"][1] == 20908 * 3
    assert cases["copy_betas"][1] == 10


def test_threads_sharing_a_handle_and_a_handle_per_thread(capi_dir, bundle_dir, noise_image):
    image, width, height = noise_image
    printed = run_program([capi_dir / "capi_check", "threads", bundle_dir, image, width, height]).stdout
    assert "shared pipeline: 3 threads x 2 runs match" in printed
    assert "pipeline per thread: 2 threads x 2 runs match" in printed
    assert "then BODYRT_ERROR_INVALID_HANDLE" in printed
