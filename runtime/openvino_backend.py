"""OpenVINO on the CPU: one stage graph at fp32, bf16 or int8, compiled once per machine and cached.

The runner has the same interface as the ONNX Runtime one (activate, infer, deactivate) and reads
the same ONNX files, so the bundle and its manifest drive both. Precision is explicit:

    fp32  inference-precision hint f32. OpenVINO's own default on a bf16-capable CPU is bf16, so the
          hint is always set: fp32 never silently becomes bf16.
    bf16  hint bf16; refused (BackendUnavailableError) on a CPU without native bf16.
    int8  the graph file is the quantized (QDQ) variant; quantized convolutions run in int8 and every
          other operation at f32.

Shapes: every person count from two on shares one compiled model per stage, compiled with the graph's
dynamic person axis (one cache entry). One person, the common case, gets a model compiled for static
shapes, which runs faster on some stages (measured, contended 2-core AMD EPYC with AVX-512 BF16, fp32, medians:
merge 12-16 ms static against 26 ms dynamic, face 87-108 against 100-116 ms, body and hand equal
within noise; one person end to end about 5% slower dynamic). $BODYRT_OPENVINO_SHAPES=dynamic uses the
dynamic model for one person too: one entry and one model in memory per stage and precision, at that
cost. At most two compiled models per stage stay in memory.

Cache: compiled models are exported to `<cache>/openvino/<stage>-<key>.blob`, the key hashing the
graph's sha256 (from the bundle manifest), the precision, the shapes (or "dynamic"), the thread count,
the OpenVINO version and the CPU (name, capabilities and ISA flags), so a blob is never used on another
machine, library or bundle. Location, size bound (4 GiB by default, $BODYRT_OPENVINO_CACHE_LIMIT,
least recently used entries removed first) and the locking that lets two processes share it:
bodyrt.runtime.compile_cache. An unwritable cache only costs time.

Each blob is verified before use: its sha256 is stored beside it (`<key>.blob.sha256`, written when the
blob is), and a blob whose bytes do not hash to it (a flipped bit, a truncated or overwritten file, a
blob without its hash) is never imported: it is recompiled from the bundle's verified graph and
replaced, with a warning naming it. OpenVINO's own CACHE_DIR is not used: it stores blobs without a
check bodyrt could apply, nor a bound.
"""

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from bodyrt.errors import BackendUnavailableError, InputError
from bodyrt.runtime import compile_cache
from bodyrt.runtime.compile_cache import default_cache_dir, hash_file as digest_path  # noqa: F401 (API)

log = logging.getLogger("bodyrt")

PRECISIONS = ("fp32", "bf16", "int8")
# OpenVINO's inference-precision hint for the operations a precision does not fix by itself.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
SHAPES_VARIABLE = "BODYRT_OPENVINO_SHAPES"
SHAPE_MODES = ("static1", "dynamic")  # one person: its own static model, or the shared dynamic one


def shape_mode() -> str:
    """$BODYRT_OPENVINO_SHAPES: "static1" (default) or "dynamic"; InputError for anything else."""
    mode = os.environ.get(SHAPES_VARIABLE, "").strip() or "static1"
    if mode not in SHAPE_MODES:
        raise InputError(f"{SHAPES_VARIABLE} must be one of {', '.join(SHAPE_MODES)}, got {mode!r}")
    return mode


def import_openvino():
    """The openvino module, or BackendUnavailableError saying what to install."""
    try:
        import openvino
    except ImportError as error:
        raise BackendUnavailableError(
            f"the openvino backend needs OpenVINO, which does not import here ({error}); "
            "install it with: pip install openvino") from None
    return openvino


def cpu_capabilities(core) -> list[str]:
    """OpenVINO's optimisation capabilities of this CPU, e.g. ['BF16', 'FP32', 'INT8', ...]."""
    return [str(item) for item in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_precision(core, precision: str) -> None:
    """Raise unless this CPU runs `precision` natively; never fall back to another precision."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and "BF16" not in cpu_capabilities(core):
        raise BackendUnavailableError(
            f"bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this CPU "
            f"({core.get_property('CPU', 'FULL_DEVICE_NAME')}) reports {cpu_capabilities(core)}. "
            "Use --precision fp32, or int8 with a quantized bundle variant")


def cpu_fingerprint(core) -> str:
    """Name, OpenVINO capabilities and ISA flags of this CPU: what a compiled blob depends on."""
    flags = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return json.dumps([str(core.get_property("CPU", "FULL_DEVICE_NAME")), cpu_capabilities(core), flags])


def static_shapes(input_specs, people: int) -> dict:
    """The manifest's input TensorSpecs of a stage ('people' on the person axis) -> name -> shape."""
    return {spec.name: [people if isinstance(dim, str) else int(dim) for dim in spec.shape] for spec in input_specs}


class OpenVinoRunner:
    """One stage graph on OpenVINO's CPU plugin at a fixed precision."""

    name = "openvino"

    def __init__(self, model_path, threads: int = 2, precision: str = "fp32", model_sha256: str | None = None,
                 input_specs=None, cache_dir=None, shapes: str | None = None):
        """input_specs: the manifest's inputs of this stage (for the one-person precompile); model_sha256:
        the graph's hash from the manifest (hashed here when not given); shapes: one of SHAPE_MODES
        (default: $BODYRT_OPENVINO_SHAPES, else "static1")."""
        self.model_path = Path(model_path)
        self.threads = threads
        self.precision = precision
        self.model_sha256 = model_sha256
        self.input_specs = input_specs
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.shapes = shapes or shape_mode()
        self.cache_limit = compile_cache.cache_limit()  # checked here: a bad value fails before any compile
        if self.shapes not in SHAPE_MODES:
            raise InputError(f"shapes must be one of {', '.join(SHAPE_MODES)}, got {shapes!r}")
        self.core = None
        self.compiled = {}  # "people1" or "dynamic" -> (compiled model, infer request, output names)
        self.precision_ran = None

    def activate(self):
        openvino = import_openvino()
        self.openvino = openvino
        self.core = openvino.Core()
        check_precision(self.core, self.precision)
        self.identity = {"graph": self.model_sha256 or _sha256(self.model_path), "precision": self.precision,
                         "threads": self.threads, "openvino": openvino.get_version(),
                         "cpu": cpu_fingerprint(self.core)}
        if self.shapes == "dynamic":
            self._compiled_for("dynamic", None)
        elif self.input_specs:
            self._compiled_for("people1", static_shapes(self.input_specs, 1))
        return self

    def config(self) -> dict:
        return {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision],
                "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}

    def infer(self, feeds: dict) -> dict:
        feeds = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        people = {value.shape[0] for value in feeds.values()}
        if people == {1} and self.shapes == "static1":
            compiled, request, outputs = self._compiled_for("people1", {k: list(v.shape) for k, v in feeds.items()})
        else:
            compiled, request, outputs = self._compiled_for("dynamic", None)
        request.infer(feeds)
        return {name: request.get_tensor(name).data.copy() for name in outputs}

    def deactivate(self):
        self.compiled = {}
        self.core = None

    def _compiled_for(self, variant: str, shapes: dict | None):
        if variant not in self.compiled:
            compiled, blob = self._load_or_compile(variant, shapes)
            actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            if actual != PRECISION_HINTS[self.precision]:
                raise BackendUnavailableError(f"{self.model_path.name}: asked for {self.precision}, OpenVINO "
                                              f"compiled it for {actual}")
            self.precision_ran = self.precision
            outputs = [output.get_any_name() for output in compiled.outputs]
            # blob: the mapped cache file, kept alive as long as the model that may point into it
            self.compiled[variant] = (compiled, compiled.create_infer_request(), outputs, blob)
        return self.compiled[variant][:3]

    def _blob_path(self, variant: str, shapes: dict | None) -> Path:
        key = json.dumps({**self.identity, "shapes": shapes, "variant": variant}, sort_keys=True)
        return self.cache_dir / f"{self.model_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.blob"

    def _load_or_compile(self, variant: str, shapes: dict | None):
        """(compiled model, mapped blob or None): from the cache when a blob for this key exists."""
        blob_path = self._blob_path(variant, shapes)
        if blob_path.is_file():
            try:
                with compile_cache.cache_lock(self.cache_dir, exclusive=False):
                    # copy-on-write map: OpenVINO reads the weights in place instead of copying 100s of MB
                    blob = np.memmap(blob_path, dtype=np.uint8, mode="c")
                    problem = blob_problem(blob_path, blob)
                if problem is None:
                    tensor = self.openvino.Tensor(blob, shared_memory=True)
                    compiled = self.core.import_model(tensor, "CPU", self.config())
                    compile_cache.touch(blob_path)  # just used: the last entry pruning would remove
                    return compiled, blob
                log.warning("%s: cached OpenVINO model not used: %s; recompiling", blob_path, problem)
            except FileNotFoundError:  # pruned by another process since is_file(): a plain miss
                pass
            except (RuntimeError, ValueError, OSError) as error:
                log.warning("%s: cached OpenVINO model unusable (%s); recompiling", blob_path, error)
        model = self.core.read_model(str(self.model_path))
        if shapes is not None:  # else the graph's own dynamic person axis
            model.reshape(shapes)
        compiled = self.core.compile_model(model, "CPU", self.config())
        self._store(compiled, blob_path)
        return compiled, None

    def _store(self, compiled, blob_path: Path) -> None:
        """Write the blob beside its sha256 and prune the cache to its limit, oldest entries first."""
        limit = self.cache_limit
        partial = None
        try:
            data = compiled.export_model().getbuffer()
            if len(data) > limit:
                log.info("%s: not cached: %d bytes exceed the cache limit of %d bytes (%s)", blob_path,
                         len(data), limit, compile_cache.LIMIT_VARIABLE)
                return
            blob_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=blob_path.parent, suffix=".partial", delete=False) as stream:
                partial = stream.name
                stream.write(data)
            with compile_cache.cache_lock(self.cache_dir, exclusive=True):
                # the hash first: a reader that meets the new hash beside the old blob recompiles, never misuses
                _write_atomically(digest_path(blob_path), hashlib.sha256(data).hexdigest().encode())
                os.replace(partial, blob_path)
                partial = None
                removed = compile_cache.prune(self.cache_dir, limit, keep=blob_path)
            for old in removed:
                log.info("%s: removed from the OpenVINO cache (least recently used; limit %d bytes)", old, limit)
        except OSError as error:
            log.warning("%s: cannot cache the compiled OpenVINO model (%s)", blob_path, error)
        finally:
            if partial:
                Path(partial).unlink(missing_ok=True)


def blob_problem(blob_path: Path, blob) -> str | None:
    """None when the blob's bytes hash to the sha256 stored beside it, else what is wrong."""
    try:
        expected = digest_path(blob_path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return "no sha256 stored beside it"
    if hashlib.sha256(memoryview(blob)).hexdigest() != expected:
        return "its bytes do not match the sha256 stored beside it (modified or truncated)"
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as stream:
        stream.write(data)
    os.replace(stream.name, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
