"""The crop kernels run on the CPU: ctypes over the g++ build of crops.cu (see build.py).

This runs the CUDA kernels' own code through an emulated launch, one thread at a time, so tests can
check the GPU arithmetic without a GPU. It is a test vehicle, not a fast path: the CPU runtime uses
bodyrt.runtime.crops.
"""

import ctypes
import functools

import numpy as np

from bodyrt.errors import InputError
from bodyrt.kernels.build import build_host_library

_u8 = ctypes.POINTER(ctypes.c_ubyte)
_f32 = ctypes.POINTER(ctypes.c_float)
_i32 = ctypes.POINTER(ctypes.c_int)
_IMAGE_ARGS = [_u8, ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_int, _f32]


@functools.lru_cache(maxsize=None)
def host_library(out_dir=None) -> ctypes.CDLL:
    """Build (or reuse) and load the host library; argument types are declared once here."""
    library = ctypes.CDLL(str(build_host_library(out_dir)))
    library.bodyrt_host_part_crops.argtypes = _IMAGE_ARGS + [_f32, _i32, _u8, ctypes.c_int, ctypes.c_int,
                                                             ctypes.c_int, ctypes.c_void_p]
    library.bodyrt_host_part_crops.restype = None
    library.bodyrt_host_body_crops.argtypes = _IMAGE_ARGS + [_f32, ctypes.c_double, ctypes.c_int, ctypes.c_int,
                                                             ctypes.c_int, ctypes.c_void_p, _f32]
    library.bodyrt_host_body_crops.restype = None
    library.bodyrt_crop_block_width.restype = ctypes.c_int
    return library


def _pointer(array: np.ndarray, pointer_type):
    return array.ctypes.data_as(pointer_type)


def _image_arguments(image, mean, std, channel_order: str, keep_alive: list):
    """(pointer, height, width, pitch bytes, bgr flag, normalisation pointer) for an (H, W, 3) uint8 image.

    A view with row pitch >= 3*W bytes and packed pixels is passed as is; anything else is copied.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if channel_order not in ("rgb", "bgr"):
        raise InputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    height, width, _ = image.shape
    if image.strides[1:] != (3, 1) or image.strides[0] < 3 * width:
        image = np.ascontiguousarray(image)
    normalisation = np.concatenate([np.asarray(mean, np.float32).reshape(3), np.asarray(std, np.float32).reshape(3)])
    keep_alive += [image, normalisation]
    return (_pointer(image, _u8), height, width, image.strides[0], int(channel_order == "bgr"),
            _pointer(normalisation, _f32))


def host_part_crops(image, boxes, crop_size: int, mirror, mean, std, channel_order: str = "rgb",
                    dtype=np.float32, box_rows=None) -> np.ndarray:
    """part_crops_f32 / part_crops_f16 on the CPU.

    image (H, W, 3) uint8, any row pitch; boxes (B, 3) cx, cy, S full-image pixels; mirror (K,) bool
    or None; box_rows (K,) int rows of `boxes` (None: K = B, crop k reads row k).
    Returns (K, 3, crop_size, crop_size) float32 or float16 (RGB channel order).
    """
    keep_alive = []
    image_arguments = _image_arguments(image, mean, std, channel_order, keep_alive)
    boxes = np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 3)
    rows = None if box_rows is None else np.ascontiguousarray(box_rows, dtype=np.int32).reshape(-1)
    count = len(boxes) if rows is None else len(rows)
    if rows is not None and count and (rows.min() < 0 or rows.max() >= len(boxes)):
        raise InputError(f"box_rows must index the {len(boxes)} boxes, got {rows.min()}..{rows.max()}")
    flags = None if mirror is None else np.ascontiguousarray(mirror, dtype=np.uint8).reshape(-1)
    if flags is not None and len(flags) != count:
        raise InputError(f"mirror must have one flag per crop ({count}), got {len(flags)}")
    if crop_size < 2:
        raise InputError(f"crop_size must be at least 2, got {crop_size}")
    out = np.empty((count, 3, crop_size, crop_size), dtype=np.dtype(dtype))
    half = _half_flag(out.dtype)
    if count:
        host_library().bodyrt_host_part_crops(
            *image_arguments, _pointer(boxes, _f32), None if rows is None else _pointer(rows, _i32),
            None if flags is None else _pointer(flags, _u8), count, crop_size, half, out.ctypes.data)
    return out


def host_body_crops(image, person_boxes, mean, std, crop_size: int = 256, scale: float = 1.2,
                    channel_order: str = "rgb", dtype=np.float32):
    """body_crops_f32 / body_crops_f16 on the CPU.

    image (H, W, 3) uint8, any row pitch; person_boxes (N, 4) x0, y0, x1, y1 full-image pixels.
    Returns crops (N, 3, crop_size, crop_size) float32 or float16 and transforms (N, 3, 3) float32.
    Invalid boxes are not rejected here: the kernel writes zeros for them, as it does on the GPU.
    """
    keep_alive = []
    image_arguments = _image_arguments(image, mean, std, channel_order, keep_alive)
    boxes = np.ascontiguousarray(person_boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty((len(boxes), 3, crop_size, crop_size), dtype=np.dtype(dtype))
    transforms = np.empty((len(boxes), 3, 3), dtype=np.float32)
    half = _half_flag(out.dtype)
    if len(boxes):
        host_library().bodyrt_host_body_crops(*image_arguments, _pointer(boxes, _f32), float(scale), len(boxes),
                                              crop_size, half, out.ctypes.data, _pointer(transforms, _f32))
    return out, transforms


def _half_flag(dtype: np.dtype) -> int:
    if dtype == np.float32:
        return 0
    if dtype == np.float16:
        return 1
    raise InputError(f"dtype must be float32 or float16, got {dtype}")
