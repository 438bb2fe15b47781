"""The CUDA crop kernel, checked without a GPU.

crops.cu is built for the host with g++ (bodyrt.kernels.host, cached in ~/.cache/bodyrt) and run
through the same launch description the GPU runtime uses, against the references of test_crops.py:
grid_sample in float64 for part crops, cv2.resize for body crops. nvcc builds the shipped fatbin
once (skipped only when nvcc is absent) and bodyrt.kernels.module's choice of binary is checked
with fake devices and drivers.
"""

import ctypes
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bodyrt.errors import BackendUnavailableError, InputError
from bodyrt.kernels import build, launch, module
from bodyrt.kernels.host import host_body_crops, host_launch, host_part_crops
from bodyrt.runtime.crops import body_crops, part_crops
from test_crops import (BAD_PERSON_BOXES, MEAN, STD, body_reference, hand_computed_transform, image_with_pitch,
                        part_reference, random_body_case, random_part_case)

PIXEL_SCALE = 1.0 / 255.0
BODY = {"scale": 1.2, "pixel_scale": PIXEL_SCALE}


def kernel_part_crops(case: dict, dtype=np.float32) -> np.ndarray:
    return host_part_crops(case["image"], case["boxes"], case["parts"], case["mirror"], case["crop_size"], MEAN, STD,
                           PIXEL_SCALE, channel_order=case["channel_order"], dtype=dtype)


def half_rounding_bound(values: np.ndarray) -> np.ndarray:
    """Half a float16 ulp of each value (the most round-to-nearest can move it)."""
    magnitude = np.abs(values).astype(np.float16)
    return (np.spacing(magnitude).astype(np.float64)) / 2


# ---------------------------------------------------------------------------------------------
# Part crops

def test_part_crops_kernel_matches_grid_sample_on_random_cases():
    """Odd sizes and pitches, RGB and BGR, mirror on and off, boxes inside, straddling, outside,
    tiny, zero-sized and huge; float32 within 1e-5, float16 exactly the float32 result rounded."""
    rng = np.random.default_rng(21)
    worst = 0.0
    for _ in range(400):
        case = random_part_case(rng)
        reference = part_reference(case)
        crops = kernel_part_crops(case)
        assert crops.shape == reference.shape and crops.dtype == np.float32
        worst = max(worst, float(np.abs(crops - reference).max()))
        halves = kernel_part_crops(case, np.float16)
        assert halves.dtype == np.float16
        np.testing.assert_array_equal(halves, crops.astype(np.float16))
    assert worst < 1e-5


def test_part_crops_kernel_cuts_hands_and_face_of_a_full_hd_frame_like_grid_sample():
    """The deployment case: one 1280x720 BGR frame, two people, the body engine's (N, 3, 3) boxes."""
    rng = np.random.default_rng(22)
    image = image_with_pitch(rng, 720, 1280, 64)
    boxes = np.array([[[640.3, 360.7, 131.9], [1250.2, 20.4, 140.0], [700.0, 200.0, 95.5]],
                      [[10.5, 700.25, 80.0], [300.0, 400.0, 0.4], [-30.0, 100.0, 120.0]]], dtype=np.float32)
    for parts, mirror, crop_size in (([0, 1], [False, True], 224), ([2], [False], 256)):
        case = {"image": image, "boxes": boxes, "parts": parts, "mirror": mirror, "crop_size": crop_size,
                "channel_order": "bgr"}
        reference = part_reference(case)
        crops = kernel_part_crops(case)
        np.testing.assert_allclose(crops, reference, rtol=0, atol=1e-5)
        halves = kernel_part_crops(case, np.float16).astype(np.float64)
        assert np.all(np.abs(halves - reference) <= half_rounding_bound(reference) + 1e-5)


def test_part_crops_kernel_agrees_with_the_numpy_runtime():
    rng = np.random.default_rng(23)
    for _ in range(20):
        case = random_part_case(rng)
        boxes = case["boxes"][:, case["parts"]]
        expected = part_crops(case["image"], boxes[..., :2].reshape(-1, 2), boxes[..., 2].reshape(-1),
                              case["crop_size"], np.tile(case["mirror"], len(boxes)), MEAN, STD,
                              channel_order=case["channel_order"], pixel_scale=PIXEL_SCALE)
        np.testing.assert_allclose(kernel_part_crops(case), expected, rtol=0, atol=2e-6)


def test_part_crops_kernel_writes_zeros_for_a_non_finite_or_inverted_box_only():
    """Part boxes live on the device, so the kernel cannot raise: their crops are all zero, the
    others are untouched. (The numpy runtime raises InputError for the same boxes.)"""
    image = np.full((20, 30, 3), 180, dtype=np.uint8)
    boxes = np.array([[[10, 10, 8], [np.nan, 10, 8], [10, 10, -1]], [[10, np.inf, 8], [10, 10, np.inf], [10, 10, 8]]],
                     dtype=np.float32)
    crops = host_part_crops(image, boxes, [0, 1, 2], [False, True, False], 6, MEAN, STD, PIXEL_SCALE)
    valid = np.array([True, False, False, False, False, True])
    assert not crops[~valid].any()
    assert np.all(crops[valid] != 0)


# ---------------------------------------------------------------------------------------------
# Body crops

def test_body_crops_kernel_matches_cv2_resize_on_random_cases():
    rng = np.random.default_rng(24)
    for _ in range(40):
        case = random_body_case(rng)
        crops, transforms = host_body_crops(case["image"], case["boxes"], MEAN, STD, crop_size=case["crop_size"],
                                            **BODY, channel_order=case["channel_order"])
        np.testing.assert_allclose(crops, body_reference(case), rtol=0, atol=1e-5)
        for box, transform in zip(case["boxes"], transforms):
            np.testing.assert_allclose(transform, hand_computed_transform(box, case["crop_size"]), rtol=1e-6,
                                       atol=1e-4)
        numpy_crops, numpy_transforms = body_crops(case["image"], case["boxes"], MEAN, STD, scale=1.2,
                                                   crop_size=case["crop_size"], channel_order=case["channel_order"],
                                                   pixel_scale=PIXEL_SCALE)
        np.testing.assert_allclose(crops, numpy_crops, rtol=0, atol=2e-6)
        np.testing.assert_array_equal(transforms, numpy_transforms)


def test_body_crop_kernel_of_a_full_hd_frame_in_both_precisions():
    rng = np.random.default_rng(25)
    image = image_with_pitch(rng, 720, 1280, 5)
    box = np.array([[100.0, 50.0, 300.0, 450.0]], dtype=np.float32)  # c = (200, 250), S = 480
    reference = body_reference({"image": image, "boxes": box, "crop_size": 256, "channel_order": "rgb"})
    crops, transforms = host_body_crops(image, box, MEAN, STD, crop_size=256, **BODY)
    np.testing.assert_allclose(crops, reference, rtol=0, atol=1e-5)
    expected = [[256 / 480, 0, 256 * (0.5 - 200 / 480)], [0, 256 / 480, 256 * (0.5 - 250 / 480)], [0, 0, 1]]
    np.testing.assert_allclose(transforms[0], expected, rtol=1e-6)
    halves, _ = host_body_crops(image, box, MEAN, STD, crop_size=256, **BODY, dtype=np.float16)
    np.testing.assert_array_equal(halves, crops.astype(np.float16))


@pytest.mark.parametrize("name", sorted(BAD_PERSON_BOXES))
def test_body_crops_kernel_host_rejects_a_bad_box_and_the_kernel_zeros_it(name):
    box, reason = BAD_PERSON_BOXES[name]
    image = np.full((40, 60, 3), 90, dtype=np.uint8)
    boxes = np.array([[1, 1, 30, 30], box], dtype=np.float32)
    with pytest.raises(InputError, match=rf"person box 1 .*{reason}"):
        host_body_crops(image, boxes, MEAN, STD, crop_size=8, **BODY)
    crops, transforms = host_body_crops(image, boxes, MEAN, STD, crop_size=8, **BODY, check_boxes=False)
    assert np.all(crops[0] != 0) and transforms[0, 2, 2] == 1
    if name != "fully outside":  # a box off the image still has a valid rectangle: its crop is padding
        assert not crops[1].any() and not transforms[1].any()


# ---------------------------------------------------------------------------------------------
# The launch interface

def kernel_signatures(source: str) -> dict:
    """extern "C" __global__ entry points of crops.cu -> [(parameter name, C type), ...]."""
    signatures = {}
    for name, parameters in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source):
        entries = [" ".join(parameter.split()) for parameter in parameters.split(",")]
        signatures[name] = [(entry.rsplit(" ", 1)[1].lstrip("*"), entry.rsplit(" ", 1)[0] + "*" * entry.count("*"))
                            for entry in entries]
    return signatures


C_TYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float,
           "double": ctypes.c_double, "unsigned int": ctypes.c_uint}


def test_launch_parameters_match_the_kernel_signatures():
    signatures = kernel_signatures(build.KERNEL_SOURCE.read_text())
    assert sorted(signatures) == sorted(launch.KERNEL_NAMES)
    for name, parameters in signatures.items():
        described = launch.KERNEL_PARAMETERS[name]
        assert [parameter for parameter, _ in parameters] == [parameter for parameter, _ in described]
        for (parameter, c_type), (_, ctype) in zip(parameters, described):
            expected = ctypes.c_void_p if c_type.endswith("*") else C_TYPES[c_type.removeprefix("const ")]
            assert ctype is expected, (name, parameter, c_type)


def test_part_launch_grid_block_and_mirror_mask():
    hands = launch.part_crops_launch(1, 720, 1280, 3840, "bgr", MEAN, STD, 0.5, 2, people=3, boxes_per_person=3,
                                     parts=[0, 1], mirror=[False, True], crop_size=224, out=3, dtype="float16")
    assert hands.kernel == "part_crops_f16"
    assert hands.block == (32, 8, 1) and hands.grid == (7, 28, 6)
    values = dict(zip([name for name, _ in launch.KERNEL_PARAMETERS[hands.kernel]],
                      [value.value for value in hands.arguments]))
    assert values["first_part"] == 0 and values["parts_per_person"] == 2 and values["mirror_mask"] == 0b10
    assert values["bgr"] == 1 and values["pitch"] == 3840 and values["mean_g"] == pytest.approx(0.456)
    assert values["pixel_divisor"] == 2.0  # the inverse of the pixel_scale given
    face = launch.part_crops_launch(1, 720, 1280, 3840, "rgb", MEAN, STD, PIXEL_SCALE, 2, 1, 3, [2], [False], 256, 3)
    assert face.kernel == "part_crops_f32" and face.grid == (8, 32, 1)
    params = face.kernel_params()
    assert len(params) == len(face.arguments)
    assert ctypes.c_int.from_address(params[17]).value == 256  # crop_size, read as cuLaunchKernel would
    odd = launch.crop_grid(225, 2)
    assert odd[0] * 32 >= 225 > (odd[0] - 1) * 32 and odd[1] * 8 >= 225 > (odd[1] - 1) * 8


@pytest.mark.parametrize("arguments, message", [
    ({"parts": [0, 2], "mirror": [False, True]}, "consecutive"),
    ({"parts": [2, 3], "mirror": [False, False]}, "consecutive"),
    ({"parts": [0, 1], "mirror": [False]}, "mirror flag"),
    ({"crop_size": 1}, "crop_size"),
    ({"pitch": 3 * 1280 - 1}, "pitch"),
    ({"channel_order": "bgra"}, "channel_order"),
    ({"dtype": "float64"}, "dtype"),
    ({"pixel_scale": 0.0}, "pixel_scale"),
])
def test_part_launch_rejects_bad_arguments(arguments, message):
    defaults = {"image": 1, "height": 720, "width": 1280, "pitch": 3840, "channel_order": "rgb", "mean": MEAN,
                "std": STD, "pixel_scale": PIXEL_SCALE, "part_boxes": 2, "people": 1, "boxes_per_person": 3, "parts": [0, 1],
                "mirror": [False, True], "crop_size": 224, "out": 3}
    with pytest.raises(InputError, match=message):
        launch.part_crops_launch(**{**defaults, **arguments})


def test_host_launch_of_an_unknown_kernel_is_an_error():
    bogus = launch.KernelLaunch("no_such_kernel", (1, 1, 1), (1, 1, 1), ())
    with pytest.raises(BackendUnavailableError, match="no_such_kernel"):
        host_launch(bogus)


# ---------------------------------------------------------------------------------------------
# nvcc, the fatbin and the choice of binary

@pytest.fixture(scope="module")
def fatbin_dir(tmp_path_factory):
    """crops.fatbin built once by the CLI, as CI and wheel builds do (about 5 s)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH (the CUDA toolkit is not installed)")
    out_dir = tmp_path_factory.mktemp("fatbin")
    result = subprocess.run([sys.executable, "-m", "bodyrt.kernels.build", "--nvcc", str(out_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out_dir


def test_nvcc_builds_cubins_for_every_arch_and_ptx(fatbin_dir):
    contents = build.fatbin_contents((fatbin_dir / build.FATBIN_NAME).read_bytes())
    assert sorted(contents) == sorted([("cubin", arch) for arch in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")]
                                      + [("ptx", "compute_90")])
    report = (fatbin_dir / (build.FATBIN_NAME + ".log")).read_text()
    for arch in build.FATBIN_ARCHS:
        for name in launch.KERNEL_NAMES:
            assert f"Compiling entry function '{name}' for '{arch}'" in report
    assert "spill" not in report.replace("0 bytes spill", "")


PTX_TYPES = {ctypes.c_void_p: ".u64", ctypes.c_int: ".u32", ctypes.c_uint: ".u32", ctypes.c_longlong: ".u64",
             ctypes.c_float: ".f32", ctypes.c_double: ".f64"}


def test_nvcc_ptx_parameters_match_the_launch_description(tmp_path):
    """What the GPU reads from kernelParams: the PTX parameter list of each entry point, in order."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH (the CUDA toolkit is not installed)")
    ptx_path = tmp_path / "crops.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=compute_90", "-std=c++17", "-o", str(ptx_path), str(build.KERNEL_SOURCE)],
                   check=True, capture_output=True)
    ptx = ptx_path.read_text()
    for name, parameters in launch.KERNEL_PARAMETERS.items():
        declaration = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S).group(1)
        assert re.findall(r"\.param (\.\w+)", declaration) == [PTX_TYPES[ctype] for _, ctype in parameters]


def test_the_fatbin_serves_a_cuda_13_driver_and_nvrtc_the_rest(fatbin_dir, tmp_path, monkeypatch):
    image, origin = module.crop_kernel_image((8, 6), 13000, fatbin_directory=fatbin_dir)
    assert origin == "fatbin" and image == (fatbin_dir / build.FATBIN_NAME).read_bytes()
    assert module.crop_kernel_image((12, 0), 13010, fatbin_directory=fatbin_dir)[1] == "fatbin"  # PTX JIT
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # as if cuda-python were not installed
    for capability, driver, directory in (((8, 6), 12040, fatbin_dir), ((8, 6), 13000, tmp_path)):
        with pytest.raises(BackendUnavailableError,
                           match=r'pip install "bodyrt\[gpu-cu13\]" for CUDA 13 drivers.*"bodyrt\[gpu-cu12\]" for CUDA 12'):
            module.crop_kernel_image(capability, driver, fatbin_directory=directory, cache=tmp_path)
    stale = tmp_path / "stale"
    stale.mkdir()
    for suffix in ("", build.STAMP_SUFFIX):
        shutil.copy(fatbin_dir / (build.FATBIN_NAME + suffix), stale)
    (stale / (build.FATBIN_NAME + build.STAMP_SUFFIX)).write_text('{"source_sha256": "old"}')
    assert module.shipped_fatbin(stale) is None


def test_fatbin_rules_for_devices_and_drivers():
    stamp = {"nvcc": "13.0", "cubins": list(build.FATBIN_ARCHS), "ptx": "compute_90"}
    assert module.fatbin_serves(stamp, (8, 9), 13000)
    assert module.fatbin_serves(stamp, (8, 7), 13000)       # sm_86 cubin runs on 8.7
    assert module.fatbin_serves(stamp, (10, 0), 13000)      # PTX JIT on Blackwell
    assert not module.fatbin_serves(stamp, (8, 6), 12080)   # nvcc 13 output needs a CUDA 13 driver
    assert not module.fatbin_serves({**stamp, "ptx": None}, (10, 0), 13000)
    with pytest.raises(BackendUnavailableError, match="compute capability >= 7.5"):
        module.crop_kernel_image((7, 0), 13000)
    with pytest.raises(BackendUnavailableError, match="CUDA 12 or newer driver"):
        module.crop_kernel_image((8, 6), 11080)
