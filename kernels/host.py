"""The crop kernels run on the CPU: ctypes over the g++ build of crops.cu (see build.py).

Each call builds its launch with bodyrt.kernels.launch, exactly as the GPU runtime does, and hands
it to the host library, which runs the kernel's own code once per emulated thread. This is a test
vehicle (about 10 ms per 224x224 crop), not a fast path: the CPU runtime uses bodyrt.runtime.crops.
"""

import ctypes
import functools

import numpy as np

from bodyrt.errors import BackendUnavailableError, InputError
from bodyrt.kernels.build import build_host_library
from bodyrt.kernels.launch import KernelLaunch, body_crops_launch, part_crops_launch
from bodyrt.runtime.crops import check_person_boxes


@functools.lru_cache(maxsize=None)
def host_library() -> ctypes.CDLL:
    """Build (or reuse, from the cache) and load the host library."""
    library = ctypes.CDLL(str(build_host_library()))
    library.bodyrt_host_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                                           ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    library.bodyrt_host_launch.restype = ctypes.c_int
    return library


def host_launch(launch: KernelLaunch) -> None:
    """Run one launch (host pointers) on the CPU, as cuLaunchKernel would run it on the GPU."""
    grid = (ctypes.c_uint * 3)(*launch.grid)
    block = (ctypes.c_uint * 3)(*launch.block)
    params = launch.kernel_params()
    if host_library().bodyrt_host_launch(launch.kernel.encode(), grid, block, ctypes.addressof(params)) != 0:
        raise BackendUnavailableError(f"the host crop library has no kernel {launch.kernel!r}")


def _image_view(image) -> np.ndarray:
    """(H, W, 3) uint8 with packed pixels and any row pitch >= 3*W bytes, passed as is; otherwise copied."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if image.strides[1:] != (3, 1) or image.strides[0] < 3 * image.shape[1]:
        image = np.ascontiguousarray(image)
    return image


def host_part_crops(image, part_boxes, parts, mirror, crop_size: int, mean, std, pixel_scale: float,
                    channel_order: str = "rgb", dtype=np.float32) -> np.ndarray:
    """part_crops_f32 / part_crops_f16 on the CPU.

    image (H, W, 3) uint8, any row pitch; part_boxes (N, B, 3) cx, cy, S full-image pixels (the body
    engine's part_boxes); parts consecutive part indices, mirror one bool per part (a manifest step's
    "parts" and "mirror"). Returns (N * len(parts), 3, crop_size, crop_size) float32 or float16, RGB.
    Boxes are not checked: the kernel writes zeros for a non-finite box or a negative size.
    """
    image = _image_view(image)
    boxes = np.ascontiguousarray(part_boxes, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 3 or boxes.shape[0] == 0:
        raise InputError(f"part_boxes must be (N, B, 3) cx, cy, size with N >= 1, got {boxes.shape}")
    out = np.empty((boxes.shape[0] * len(parts), 3, crop_size, crop_size), dtype=np.dtype(dtype))
    height, width, _ = image.shape
    launch = part_crops_launch(image.ctypes.data, height, width, image.strides[0], channel_order, mean, std,
                               pixel_scale, boxes.ctypes.data, boxes.shape[0], boxes.shape[1], parts, mirror, crop_size,
                               out.ctypes.data, out.dtype)
    host_launch(launch)
    return out


def host_body_crops(image, person_boxes, mean, std, crop_size: int, scale: float, pixel_scale: float,
                    channel_order: str = "rgb", dtype=np.float32, check_boxes: bool = True):
    """body_crops_f32 / body_crops_f16 on the CPU.

    image (H, W, 3) uint8, any row pitch; person_boxes (N, 4) x0, y0, x1, y1 full-image pixels.
    Returns crops (N, 3, crop_size, crop_size) float32 or float16 (RGB) and transforms (N, 3, 3)
    float32. Bad boxes raise InputError (check_person_boxes, as the GPU runtime checks them before
    upload); with check_boxes=False they reach the kernel, which writes zeros for them.
    """
    image = _image_view(image)
    height, width, _ = image.shape
    boxes = np.ascontiguousarray(person_boxes, dtype=np.float32)
    if check_boxes:
        check_person_boxes(boxes, width, height, scale)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise InputError(f"person boxes must be (N, 4) x0, y0, x1, y1 with N >= 1, got {boxes.shape}")
    out = np.empty((len(boxes), 3, crop_size, crop_size), dtype=np.dtype(dtype))
    transforms = np.empty((len(boxes), 3, 3), dtype=np.float32)
    launch = body_crops_launch(image.ctypes.data, height, width, image.strides[0], channel_order, mean, std,
                               pixel_scale, boxes.ctypes.data, len(boxes), scale, crop_size, out.ctypes.data,
                               transforms.ctypes.data, out.dtype)
    host_launch(launch)
    return out, transforms
