"""The Python half of libbodyrt: what each function of bodyrt.h does. Never imports torch.

The library's init code (written by bodyrt.runtime.capi.build) calls `install(ffi, lib, version)`,
which attaches the entry points below to the `extern "Python"` declarations of bodyrt_capi.c.

C holds ids, never Python objects: open pipelines and held results live in a registry keyed by
ids that are never reused, so a stale id is a failed lookup, not a dangling pointer. Every entry
point gets the calling thread's error buffer as its last two arguments, returns a bodyrt_status
and turns any exception into a status and a message naming the argument at fault.
"""

import itertools
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from bodyrt import __version__
from bodyrt.errors import BackendUnavailableError, BodyrtError, BundleError, InputError
from bodyrt.images import MAX_PIXELS
from bodyrt.runtime import open_bundle

ffi = None  # the library's cffi module objects, set by install()
lib = None
OUTPUT_NAMES = {}  # bodyrt_output value -> the runtime's output name ("vertices", ...)
CHANNEL_ORDERS = {}  # bodyrt_channel_order value -> "rgb" or "bgr"


class HandleError(BodyrtError):
    """A pipeline or result id that is not open: destroyed, released or never made."""


class BufferTooSmallError(BodyrtError):
    """A caller's buffer holds fewer elements than the array to copy."""


# The bodyrt.h status for each exception type; the first match wins.
STATUS_OF_ERROR = (
    (InputError, "BODYRT_ERROR_INVALID_ARGUMENT"),
    (HandleError, "BODYRT_ERROR_INVALID_HANDLE"),
    (BufferTooSmallError, "BODYRT_ERROR_BUFFER_TOO_SMALL"),
    (BundleError, "BODYRT_ERROR_BUNDLE"),
    (BackendUnavailableError, "BODYRT_ERROR_BACKEND_UNAVAILABLE"),
    (BodyrtError, "BODYRT_ERROR_RUNTIME"),
    (Exception, "BODYRT_ERROR_INTERNAL"),
)


@dataclass
class OpenPipeline:
    pipeline: object
    faces: np.ndarray  # (F, 3) int32, C order, read-only
    lock: threading.Lock = field(default_factory=threading.Lock)  # held for a whole run
    closed: bool = False
    last_error: str = ""


@dataclass
class HeldResult:
    pipeline_id: int
    person_count: int
    outputs: dict  # name -> float32 C-order read-only array, person on axis 0


class Registry:
    """Open pipelines and held results by id. Ids start at 1 and are never reused."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_id = itertools.count(1)
        self.pipelines = {}
        self.results = {}

    def add(self, table: dict, item) -> int:
        with self.lock:
            item_id = next(self.next_id)
            table[item_id] = item
        return item_id

    def pipeline(self, pipeline_id: int, remove: bool = False) -> OpenPipeline:
        with self.lock:
            entry = self.pipelines.pop(pipeline_id, None) if remove else self.pipelines.get(pipeline_id)
        if entry is None:
            raise HandleError(f"pipeline {pipeline_id} is not open (destroyed, or never created)")
        return entry

    def result(self, result_id: int, remove: bool = False) -> HeldResult:
        with self.lock:
            held = self.results.pop(result_id, None) if remove else self.results.get(result_id)
        if held is None:
            raise HandleError(f"result {result_id} is not held (released, or never made)")
        return held


REGISTRY = Registry()


def require_pointer(pointer, name: str):
    if pointer == ffi.NULL:
        raise InputError(f"{name} is NULL")


def require_positive(value: int, name: str):
    if value <= 0:
        raise InputError(f"{name} must be > 0, got {value}")


def read_only(array: np.ndarray, dtype) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=dtype)
    array.flags.writeable = False
    return array


def copy_array(array: np.ndarray, buffer, capacity: int, count, what: str):
    """Copy array into a caller buffer of `capacity` elements; `count` (may be NULL) gets array.size."""
    if count != ffi.NULL:
        count[0] = array.size
    require_pointer(buffer, "buffer")
    if capacity < array.size:
        raise BufferTooSmallError(f"capacity {capacity} is too small for {what} {tuple(array.shape)}: "
                                  f"it needs {array.size}")
    ffi.memmove(buffer, array, array.nbytes)


def image_from_pixels(pixels, width: int, height: int, row_stride: int) -> np.ndarray:
    """(height, width, 3) uint8 C-contiguous image from rows `row_stride` bytes apart (copied if padded)."""
    size = row_stride * (height - 1) + 3 * width
    flat = np.frombuffer(ffi.buffer(pixels, size), dtype=np.uint8)
    rows = np.lib.stride_tricks.as_strided(flat, shape=(height, width, 3), strides=(row_stride, 3, 1),
                                           writeable=False)
    return np.ascontiguousarray(rows)


def output_of(result_id: int, output: int) -> np.ndarray:
    held = REGISTRY.result(result_id)
    name = OUTPUT_NAMES.get(output)
    if name is None:
        raise InputError(f"output {output} is not a bodyrt_output value")
    if name not in held.outputs:
        raise BundleError(f"this bundle's pipeline has no {name!r} output")
    return held.outputs[name]


# ---- entry points: bodyrt_py_<name> in bodyrt_capi.c, bodyrt_<name> in bodyrt.h ----

def create(bundle_dir, backend, threads, precision, pipeline_id):
    require_pointer(bundle_dir, "bundle_dir")
    require_pointer(backend, "options->backend")
    require_positive(threads, "options->threads")
    require_pointer(precision, "options->precision")
    require_pointer(pipeline_id, "pipeline")
    pipeline = open_bundle(os.fsdecode(ffi.string(bundle_dir)),
                           backend=ffi.string(backend).decode("utf-8", "replace"), threads=threads,
                           precision=ffi.string(precision).decode("utf-8", "replace"))
    faces = read_only(pipeline.faces, np.int32)
    pipeline_id[0] = REGISTRY.add(REGISTRY.pipelines, OpenPipeline(pipeline=pipeline, faces=faces))


def destroy(pipeline_id):
    entry = REGISTRY.pipeline(pipeline_id, remove=True)
    with entry.lock:  # a run in progress finishes first
        entry.closed = True
        entry.pipeline.close()


def pipeline_last_error(pipeline_id, message, capacity):
    entry = REGISTRY.pipeline(pipeline_id)
    require_pointer(message, "message")
    require_positive(capacity, "capacity")
    write_message(message, capacity, entry.last_error)


def faces(pipeline_id, faces_pointer, face_count):
    entry = REGISTRY.pipeline(pipeline_id)
    require_pointer(faces_pointer, "faces")
    require_pointer(face_count, "face_count")
    faces_pointer[0] = ffi.cast("int32_t *", ffi.from_buffer(entry.faces))
    face_count[0] = len(entry.faces)


def copy_faces(pipeline_id, buffer, capacity, count):
    copy_array(REGISTRY.pipeline(pipeline_id).faces, buffer, capacity, count, "faces")


def run(pipeline_id, pixels, width, height, row_stride, channel_order, boxes, person_count, result_id):
    entry = REGISTRY.pipeline(pipeline_id)
    require_pointer(pixels, "pixels")
    require_positive(width, "width")
    require_positive(height, "height")
    if row_stride < 3 * width:
        raise InputError(f"row_stride {row_stride} is smaller than a row of {width} pixels ({3 * width} bytes)")
    if width * height > MAX_PIXELS:  # the CLI's limit too; INT_MAX x INT_MAX would be read, copied, run
        raise InputError(f"image of {width}x{height} pixels is too large (at most {MAX_PIXELS // 1_000_000} "
                         "million pixels)")
    if channel_order not in CHANNEL_ORDERS:
        raise InputError(f"channel_order {channel_order} is neither BODYRT_RGB nor BODYRT_BGR")
    require_pointer(boxes, "boxes")
    require_positive(person_count, "person_count")
    require_pointer(result_id, "result")
    image = image_from_pixels(pixels, width, height, row_stride)
    person_boxes = np.frombuffer(ffi.buffer(boxes, 16 * person_count), dtype=np.float32).reshape(-1, 4).copy()
    with entry.lock:
        if entry.closed:
            raise HandleError(f"pipeline {pipeline_id} was destroyed during this call")
        result = entry.pipeline(image, person_boxes, channel_order=CHANNEL_ORDERS[channel_order])
    outputs = {name: read_only(result.outputs[name], np.float32)
               for name in OUTPUT_NAMES.values() if name in result.outputs}
    held = HeldResult(pipeline_id=pipeline_id, person_count=person_count, outputs=outputs)
    result_id[0] = REGISTRY.add(REGISTRY.results, held)


def release(result_id):
    REGISTRY.result(result_id, remove=True)


def person_count(result_id, count):
    held = REGISTRY.result(result_id)
    require_pointer(count, "person_count")
    count[0] = held.person_count


def output_shape(result_id, output, shape, ndim):
    array = output_of(result_id, output)
    require_pointer(shape, "shape")
    require_pointer(ndim, "ndim")
    for axis, size in enumerate(array.shape):
        shape[axis] = size
    ndim[0] = array.ndim


def copy_output(result_id, output, buffer, capacity, count):
    copy_array(output_of(result_id, output), buffer, capacity, count, OUTPUT_NAMES[output])


def output_data(result_id, output, data, count):
    array = output_of(result_id, output)
    require_pointer(data, "data")
    require_pointer(count, "count")
    data[0] = ffi.cast("float *", ffi.from_buffer(array))
    count[0] = array.size


# (entry point, what its first argument is: the pipeline whose last error a failure sets)
ENTRY_POINTS = (
    (create, None),
    (destroy, "pipeline"),
    (pipeline_last_error, None),
    (faces, "pipeline"),
    (copy_faces, "pipeline"),
    (run, "pipeline"),
    (release, "result"),
    (person_count, "result"),
    (output_shape, "result"),
    (copy_output, "result"),
    (output_data, "result"),
)


def write_message(buffer, capacity: int, message: str):
    """NUL-terminated UTF-8 into a C buffer of `capacity` bytes, truncated to fit."""
    encoded = message.encode("utf-8", "replace")[:capacity - 1]
    ffi.memmove(buffer, encoded + b"\0", len(encoded) + 1)


def pipeline_to_blame(first_argument: int, handle_kind):
    if handle_kind == "pipeline":
        return REGISTRY.pipelines.get(first_argument)
    if handle_kind == "result":
        held = REGISTRY.results.get(first_argument)
        return REGISTRY.pipelines.get(held.pipeline_id) if held else None
    return None


def as_entry_point(function, handle_kind):
    """Wrap `function` for C: status code out, exceptions into this thread's (and the pipeline's) error."""
    c_name = f"bodyrt_{function.__name__}"

    def entry_point(*arguments):
        *arguments, error, error_capacity = arguments
        try:
            function(*arguments)
        except Exception as exception:
            status_name = next(name for kind, name in STATUS_OF_ERROR if isinstance(exception, kind))
            message = f"{c_name}: {exception}"
            if status_name == "BODYRT_ERROR_INTERNAL":
                message = f"{c_name}: {type(exception).__name__}: {exception}"
            write_message(error, error_capacity, message)
            blamed = pipeline_to_blame(arguments[0], handle_kind)
            if blamed is not None:
                blamed.last_error = message
            return getattr(lib, status_name)
        return lib.BODYRT_OK

    return entry_point


def install(library_ffi, library_lib, built_version: str):
    """Attach the entry points to the library; called once by its init code."""
    global ffi, lib
    if built_version != __version__:
        raise BodyrtError(f"libbodyrt was built from bodyrt {built_version} but this environment has bodyrt "
                          f"{__version__}; rebuild it with `bodyrt build-capi`")
    ffi, lib = library_ffi, library_lib
    for value, name in ffi.typeof("bodyrt_output").elements.items():
        OUTPUT_NAMES[value] = name.removeprefix("BODYRT_OUTPUT_").lower()
    for value, name in ffi.typeof("bodyrt_channel_order").elements.items():
        CHANNEL_ORDERS[value] = name.removeprefix("BODYRT_").lower()
    for function, handle_kind in ENTRY_POINTS:
        ffi.def_extern(name=f"bodyrt_py_{function.__name__}", error=lib.BODYRT_ERROR_INTERNAL)(
            as_entry_point(function, handle_kind))
