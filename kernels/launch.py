"""How to launch the crop kernels of crops.cu: entry point, grid, block and arguments.

The GPU runtime and the host build (bodyrt.kernels.host) build their launches here, so the argument
order the CPU tests check is the one the GPU gets. Addresses are plain ints: device pointers on the
GPU, host pointers for the host build. With cuda-python:

    launch = part_crops_launch(image=frame_ptr, height=720, width=1280, pitch=3 * 1280, channel_order="bgr",
                               mean=manifest_mean, std=manifest_std, pixel_scale=manifest_pixel_scale,
                               part_boxes=part_boxes_ptr, people=n,
                               boxes_per_person=3, parts=step.parts, mirror=step.mirror,
                               crop_size=step.crop_size, out=hand_input_ptr, dtype="float16")
    params = launch.kernel_params()        # keep alive until cuLaunchKernel returns
    driver.cuLaunchKernel(functions[launch.kernel], *launch.grid, *launch.block,
                          launch.shared_memory_bytes, stream, ctypes.addressof(params), 0)

No torch, no CUDA import: this module only describes launches.
"""

import ctypes
from dataclasses import dataclass

from bodyrt.errors import InputError

# Threads per block: 32 output columns (one warp, coalesced stores) x 8 output rows.
CROP_BLOCK = (32, 8, 1)

# Each entry point's parameters, in order, with the ctypes type of its value (pointers are
# c_void_p). Mirrors the extern "C" signatures in crops.cu (tests/test_kernel_host.py compares them).
_IMAGE_PARAMETERS = (
    ("image", ctypes.c_void_p),          # const unsigned char*, interleaved (H, W, 3)
    ("height", ctypes.c_int),
    ("width", ctypes.c_int),
    ("pitch", ctypes.c_longlong),        # bytes between rows, >= 3 * width
    ("bgr", ctypes.c_int),               # 0: RGB source, 1: BGR source
    ("mean_r", ctypes.c_float), ("mean_g", ctypes.c_float), ("mean_b", ctypes.c_float),
    ("std_r", ctypes.c_float), ("std_g", ctypes.c_float), ("std_b", ctypes.c_float),
    ("pixel_divisor", ctypes.c_float),   # 1 / the manifest's preprocessing.pixel_scale
)
_PART_PARAMETERS = _IMAGE_PARAMETERS + (
    ("part_boxes", ctypes.c_void_p),     # const float*, (people, boxes_per_person, 3) cx, cy, S
    ("boxes_per_person", ctypes.c_int),
    ("first_part", ctypes.c_int),
    ("parts_per_person", ctypes.c_int),
    ("mirror_mask", ctypes.c_uint),      # bit p set: part p is mirrored
    ("crop_size", ctypes.c_int),
    ("out", ctypes.c_void_p),            # float* or unsigned short* (half), (people * parts, 3, n, n)
)
_BODY_PARAMETERS = _IMAGE_PARAMETERS + (
    ("person_boxes", ctypes.c_void_p),   # const float*, (people, 4) x0, y0, x1, y1
    ("box_scale", ctypes.c_double),
    ("crop_size", ctypes.c_int),
    ("out", ctypes.c_void_p),            # float* or unsigned short* (half), (people, 3, n, n)
    ("transforms", ctypes.c_void_p),     # float*, (people, 3, 3)
)
KERNEL_PARAMETERS = {
    "part_crops_f32": _PART_PARAMETERS,
    "part_crops_f16": _PART_PARAMETERS,
    "body_crops_f32": _BODY_PARAMETERS,
    "body_crops_f16": _BODY_PARAMETERS,
}
KERNEL_NAMES = tuple(KERNEL_PARAMETERS)


@dataclass(frozen=True)
class KernelLaunch:
    """One cuLaunchKernel call: entry point name, grid and block (x, y, z), arguments in kernel order."""

    kernel: str
    grid: tuple
    block: tuple
    arguments: tuple  # ctypes values, one per KERNEL_PARAMETERS[kernel] entry
    shared_memory_bytes: int = 0

    def kernel_params(self) -> ctypes.Array:
        """cuLaunchKernel's kernelParams: a void* array, entry i pointing at argument i's value.

        The array points into this object: keep both alive until the launch call returns.
        """
        return (ctypes.c_void_p * len(self.arguments))(*(ctypes.addressof(value) for value in self.arguments))


def crop_grid(crop_size: int, crops: int) -> tuple:
    """Blocks for `crops` crops of crop_size x crop_size, one thread per output pixel."""
    return (-(-crop_size // CROP_BLOCK[0]), -(-crop_size // CROP_BLOCK[1]), crops)


def _output_suffix(dtype) -> str:
    name = getattr(dtype, "__name__", None) or str(dtype)
    if name in ("float32", "float16"):
        return "f" + name.removeprefix("float")
    raise InputError(f"dtype must be float32 or float16, got {dtype!r}")


def _image_arguments(image: int, height: int, width: int, pitch: int, channel_order: str, mean, std,
                     pixel_scale: float) -> list:
    if height < 1 or width < 1 or pitch < 3 * width:
        raise InputError(f"image of {height}x{width} pixels needs height, width >= 1 and pitch >= 3*width bytes, "
                         f"got pitch {pitch}")
    if channel_order not in ("rgb", "bgr"):
        raise InputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    mean, std = [float(value) for value in mean], [float(value) for value in std]
    if len(mean) != 3 or len(std) != 3 or not all(value > 0 for value in std):
        raise InputError(f"mean and std must be 3 numbers each with std > 0, got mean={mean}, std={std}")
    if not pixel_scale > 0:
        raise InputError(f"pixel_scale must be positive, got {pixel_scale}")
    return [image, height, width, pitch, int(channel_order == "bgr"), *mean, *std, 1.0 / float(pixel_scale)]


def _pack(kernel: str, values: list) -> tuple:
    return tuple(ctype(value) for (_, ctype), value in zip(KERNEL_PARAMETERS[kernel], values, strict=True))


def part_crops_launch(image: int, height: int, width: int, pitch: int, channel_order: str, mean, std,
                      pixel_scale: float, part_boxes: int, people: int, boxes_per_person: int, parts, mirror,
                      crop_size: int,
                      out: int, dtype="float32") -> KernelLaunch:
    """The launch cutting crops of `parts` (consecutive part indices, e.g. the manifest step's [0, 1])
    for every person, straight from the body engine's part_boxes (people, boxes_per_person, 3).

    mirror: one bool per entry of `parts` (the step's "mirror"). out receives (people * len(parts), 3,
    crop_size, crop_size), person-major, RGB, normalised, in dtype float32 or float16.
    """
    parts, mirror = [int(part) for part in parts], [bool(flag) for flag in mirror]
    if not parts or parts != list(range(parts[0], parts[0] + len(parts))) or parts[0] < 0 \
            or parts[-1] >= boxes_per_person or len(mirror) != len(parts):
        raise InputError(f"parts must be consecutive indices below boxes_per_person={boxes_per_person}, with one "
                         f"mirror flag each; got parts={parts}, mirror={mirror}")
    if crop_size < 2 or people < 1 or boxes_per_person > 32:
        raise InputError(f"crop_size must be >= 2, people >= 1 and boxes_per_person <= 32; got {crop_size}, "
                         f"{people}, {boxes_per_person}")
    kernel = "part_crops_" + _output_suffix(dtype)
    mirror_mask = sum(1 << part for part, flag in zip(parts, mirror) if flag)
    values = _image_arguments(image, height, width, pitch, channel_order, mean, std, pixel_scale) + [
        part_boxes, boxes_per_person, parts[0], len(parts), mirror_mask, crop_size, out]
    return KernelLaunch(kernel, crop_grid(crop_size, people * len(parts)), CROP_BLOCK, _pack(kernel, values))


def body_crops_launch(image: int, height: int, width: int, pitch: int, channel_order: str, mean, std,
                      pixel_scale: float, person_boxes: int, people: int, box_scale: float, crop_size: int, out: int,
                      transforms: int,
                      dtype="float32") -> KernelLaunch:
    """The launch cutting every person's body crop and writing its crop transform.

    person_boxes (people, 4) float32 x0, y0, x1, y1 full-image pixels, already checked on the host with
    bodyrt.runtime.crops.check_person_boxes (the kernel writes zeros for a bad box, it cannot raise).
    out receives (people, 3, crop_size, crop_size) in dtype, transforms (people, 3, 3) float32.
    """
    if crop_size < 1 or people < 1 or not box_scale > 0:
        raise InputError(f"crop_size and people must be >= 1 and box_scale > 0; got {crop_size}, {people}, "
                         f"{box_scale}")
    kernel = "body_crops_" + _output_suffix(dtype)
    values = _image_arguments(image, height, width, pitch, channel_order, mean, std, pixel_scale) + [
        person_boxes, float(box_scale), crop_size, out, transforms]
    return KernelLaunch(kernel, crop_grid(crop_size, people), CROP_BLOCK, _pack(kernel, values))
