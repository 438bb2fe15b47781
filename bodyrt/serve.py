"""`bodyrt serve`: the runtime as an HTTP service on Ray Serve, on one machine or on a Ray cluster.

Each replica opens the bundle once, with as many ONNX Runtime threads as CPUs Ray gives it (the
deployment's `ray_actor_options` num_cpus), and answers:

    POST /v1/infer   an image (JPEG or PNG; the raw body, or the multipart field "image") and optional
                     person boxes -> JSON (parameters per person, vertices on request) or .npz
    GET  /healthz    200 once the bundle is open
    GET  /v1/info    bundle, backend, precision, threads, batching, limits, versions

Requests that reach a replica close together are grouped by `@serve.batch` (at most max_batch_size,
waiting at most batch_wait_ms for the group to fill) and run in turn on the replica's one inference
thread. The Pipeline takes one image per call, so persons from several images are not fused into one
network pass; the README's "Serving" section says what that would need and what it would buy.

The request limits (upload size, pixels, persons, time, batching) are the deployment's user_config:
changing them reconfigures the running replicas without reopening the bundle.
"""

import asyncio
import io
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from bodyrt.errors import BodyrtError, BundleError, InputError

log = logging.getLogger("bodyrt")

DEPLOYMENT_NAME = "BodyrtReplica"
PARAMETER_FORMATS = ("json", "npz")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of a replica; changeable on a running service (Serve's user_config)."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_persons: int = 16
    request_timeout_s: float = 60.0  # from arrival at the replica to the answer; past it: 504
    max_batch_size: int = 4  # 1: no batching
    batch_wait_ms: float = 10.0

    def check(self) -> "RequestLimits":
        for name in ("max_upload_bytes", "max_image_pixels", "max_persons", "max_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not (isinstance(self.request_timeout_s, (int, float)) and math.isfinite(self.request_timeout_s)
                and self.request_timeout_s > 0):
            raise InputError(f"request_timeout_s must be a positive number of seconds, got {self.request_timeout_s!r}")
        if not (isinstance(self.batch_wait_ms, (int, float)) and math.isfinite(self.batch_wait_ms)
                and self.batch_wait_ms >= 0):
            raise InputError(f"batch_wait_ms must be zero or more milliseconds, got {self.batch_wait_ms!r}")
        return self


@dataclass(frozen=True)
class ServeSettings:
    """One bodyrt service: the bundle, where it runs, how many replicas, and the request limits."""

    bundle: str
    replicas: int = 1
    cpus_per_replica: float = 1.0
    backend: str = "onnxruntime"
    precision: str = "fp32"
    limits: RequestLimits = field(default_factory=RequestLimits)
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None  # a running Ray cluster ("auto", "ray://head:10001", "head:6379"); None: start one
    app_name: str = "bodyrt"

    def check(self) -> "ServeSettings":
        from bodyrt.runtime.backends import CPU_BACKENDS

        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise InputError(f"--replicas must be at least 1, got {self.replicas!r}")
        if not (self.cpus_per_replica > 0 and math.isfinite(self.cpus_per_replica)):
            raise InputError(f"--cpus-per-replica must be positive, got {self.cpus_per_replica!r}")
        if self.backend not in CPU_BACKENDS:
            raise InputError(f"--backend {self.backend}: bodyrt serve runs the CPU backends "
                             f"({', '.join(CPU_BACKENDS)})")
        if self.precision not in ("fp32", "bf16", "int8"):
            raise InputError(f"--precision must be fp32, bf16 or int8, got {self.precision!r}")
        if not (0 <= self.port <= 65535):
            raise InputError(f"--port must be 0-65535, got {self.port}")
        self.limits.check()
        return self


# ----------------------------------------------------------------------------------------------------
# Requests and answers (plain functions: testable without Ray)


def parse_boxes(text, width: int, height: int, max_persons: int) -> np.ndarray:
    """Person boxes from a request: JSON [[x0, y0, x1, y1], ...] (or one [x0, y0, x1, y1]) in pixels
    of the upright image -> (N, 4) float32. None or "" means the whole image."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else text
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"boxes: not JSON ({error.msg if hasattr(error, 'msg') else error}); "
                         "give [[x0, y0, x1, y1], ...] in pixels") from None
    if isinstance(value, list) and len(value) == 4 and all(_is_number(item) for item in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError("boxes: give a non-empty list [[x0, y0, x1, y1], ...] in pixels")
    if len(value) > max_persons:
        raise InputError(f"boxes: {len(value)} boxes, at most {max_persons} persons per request")
    for index, box in enumerate(value):
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(item) for item in box)):
            raise InputError(f"boxes[{index}]: expected four numbers x0, y0, x1, y1, got {json.dumps(box)[:80]}")
        if not all(math.isfinite(item) for item in box):
            raise InputError(f"boxes[{index}]: {box} is not finite")
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            raise InputError(f"boxes[{index}]: {box} is empty or inverted (need x1 > x0 and y1 > y0)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise InputError(f"boxes[{index}]: {box} lies outside the {width}x{height} image")
    return np.asarray(value, dtype=np.float32).reshape(-1, 4)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_flag(value, name: str) -> bool:
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise InputError(f"{name}: expected true or false, got {value!r}")


def result_json(outputs: dict, boxes: np.ndarray, size: tuple, include_vertices: bool, extra: dict) -> dict:
    """JSON body: one entry per person, each result of the bundle's manifest as nested lists
    (float32 values exactly, as Python floats); vertices only when asked for (10475 x 3 per person)."""
    names = [name for name in outputs if include_vertices or name != "vertices"]
    people = []
    for person in range(len(boxes)):
        entry = {"box": boxes[person].tolist()}
        for name in names:
            entry[name] = np.asarray(outputs[name][person]).tolist()
        people.append(entry)
    return {"image": {"width": size[0], "height": size[1]}, "people": people, **extra}


def result_npz(outputs: dict, boxes: np.ndarray, include_vertices: bool) -> bytes:
    """.npz body: each result with the person on the first axis, plus person_boxes (N, 4)."""
    arrays = {name: np.asarray(value) for name, value in outputs.items() if include_vertices or name != "vertices"}
    buffer = io.BytesIO()
    np.savez(buffer, person_boxes=np.asarray(boxes, dtype=np.float32), **arrays)
    return buffer.getvalue()


def versions() -> dict:
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for package in ("bodyrt", "numpy", "onnxruntime", "openvino", "ray", "pillow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


# ----------------------------------------------------------------------------------------------------
# The replica


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BodyrtReplica:
    """One Serve replica: the bundle opened once, one inference thread, an async HTTP front."""

    def __init__(self, bundle: str, backend: str, precision: str):
        import ray
        from ray import serve

        from bodyrt.runtime import open_bundle

        _bind_serve_grpc_to_loopback()
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.cpus = float(cpus)
        self.threads = max(1, int(self.cpus))  # the replica's CPU share; a fraction still needs one thread
        self.bundle_path = str(bundle)
        self.pipeline = open_bundle(bundle, backend=backend, threads=self.threads, precision=precision)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bodyrt-infer")
        self.in_flight = 0
        self.served = 0
        self.started = time.time()
        self._batched = serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)(self._run_batch)
        self.reconfigure(asdict(RequestLimits()))  # Serve calls it again with the deployment's user_config
        self.pipeline(np.zeros((64, 64, 3), np.uint8), [[0.0, 0.0, 64.0, 64.0]])  # warm-up: first-run allocations

    def reconfigure(self, limits: dict):
        """Serve calls this with the deployment's user_config, also on a running replica."""
        self.limits = RequestLimits(**limits).check()
        self._batched.set_max_batch_size(self.limits.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.limits.batch_wait_ms / 1000.0)

    # -- inference ---------------------------------------------------------------------------------

    def _infer_one(self, image: np.ndarray, boxes: np.ndarray):
        try:
            return self.pipeline(image, boxes)
        except BodyrtError as error:
            return error

    async def _run_batch(self, items: list) -> list:
        """@serve.batch: the requests that arrived together, run in turn on the inference thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, lambda: [self._infer_one(*item) for item in items])

    async def _infer(self, image, boxes):
        if self.limits.max_batch_size > 1:
            pending = self._batched((image, boxes))
        else:
            pending = asyncio.get_running_loop().run_in_executor(self.worker, self._infer_one, image, boxes)
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(pending)),
                                            timeout=self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise _HttpError(504, f"inference took longer than the request time limit of "
                                  f"{self.limits.request_timeout_s:g} s") from None
        if isinstance(result, BodyrtError):
            raise _HttpError(400, str(result))
        return result

    # -- HTTP --------------------------------------------------------------------------------------

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/") or "/"
        try:
            if path == "/healthz":
                self._require_method(request, "GET")
                return JSONResponse({"status": "ok"})
            if path == "/v1/info":
                self._require_method(request, "GET")
                return JSONResponse(self.info())
            if path == "/v1/infer":
                self._require_method(request, "POST")
                self.in_flight += 1
                try:
                    return await self._handle_infer(request)
                finally:
                    self.in_flight -= 1
            raise _HttpError(404, f"no route {path}; use POST /v1/infer, GET /healthz or GET /v1/info")
        except _HttpError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except Exception as error:  # noqa: BLE001 - one JSON line for anything unexpected, logged in full
            log.exception("bodyrt serve: request failed")
            return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @staticmethod
    def _require_method(request, method: str):
        if request.method != method:
            raise _HttpError(405, f"{request.url.path} takes {method}, not {request.method}")

    async def _handle_infer(self, request):
        from starlette.responses import JSONResponse, Response

        started = time.perf_counter()
        query = request.query_params
        try:
            include_vertices = parse_flag(query.get("vertices"), "vertices")
        except InputError as error:
            raise _HttpError(400, str(error)) from None
        answer_format = (query.get("format") or "json").lower()
        if answer_format not in PARAMETER_FORMATS:
            raise _HttpError(400, f"format: expected json or npz, got {answer_format!r}")
        body = await self._read_body(request)
        image_bytes, boxes_text = await self._image_and_boxes(request, body, query.get("boxes"))
        try:
            from bodyrt.images import decode_image

            image = decode_image(image_bytes, name="image", max_pixels=self.limits.max_image_pixels)
            height, width = image.shape[:2]
            boxes = parse_boxes(boxes_text, width, height, self.limits.max_persons)
        except InputError as error:
            raise _HttpError(400, str(error)) from None
        result = await self._infer(image, boxes)
        self.served += 1
        if answer_format == "npz":
            return Response(result_npz(result.outputs, boxes, include_vertices), media_type="application/x-npz")
        extra = {"untrained": self.pipeline.untrained, "backend": self.pipeline.backend,
                 "precision": self.pipeline.precision,
                 "timings_ms": {name: round(value, 3) for name, value in result.timings_ms.items()},
                 "replica_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        return JSONResponse(result_json(result.outputs, boxes, (width, height), include_vertices, extra))

    async def _read_body(self, request) -> bytes:
        """The request body, refused with 413 as soon as it passes max_upload_bytes."""
        limit = self.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _HttpError(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HttpError(413, f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _image_and_boxes(self, request, body: bytes, boxes_query):
        """(image bytes, boxes text): a multipart form (fields "image" and "boxes") or the raw body."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            if not body:
                raise _HttpError(400, "image: empty request body; send JPEG or PNG bytes, or a multipart "
                                      "form with an \"image\" file field")
            return body, boxes_query
        from starlette.requests import Request

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive=replay).form(max_files=2, max_fields=8)
        except Exception as error:  # noqa: BLE001 - Starlette's parser raises several types
            raise _HttpError(400, f"multipart form: unreadable ({error})") from None
        image = form.get("image")
        if image is None:
            raise _HttpError(400, "multipart form: no \"image\" field; send the JPEG or PNG as field \"image\"")
        image_bytes = await image.read() if hasattr(image, "read") else str(image).encode()
        boxes = form.get("boxes", boxes_query)
        if hasattr(boxes, "read"):
            boxes = (await boxes.read()).decode("utf-8", "replace")
        return image_bytes, boxes

    def info(self) -> dict:
        import ray

        from dataclasses import asdict as as_dict

        manifest = self.pipeline.manifest
        context = ray.get_runtime_context()
        return {
            "bundle": self.bundle_path,
            "architecture": manifest.arch,
            "source": as_dict(manifest.source),
            "results": list(manifest.results),
            "untrained": self.pipeline.untrained,
            "backend": self.pipeline.backend,
            "precision": self.pipeline.precision,
            "stage_precisions": dict(self.pipeline.stage_precisions),
            "cpus": self.cpus,
            "threads": self.threads,
            "batching": {"max_batch_size": self.limits.max_batch_size, "batch_wait_ms": self.limits.batch_wait_ms,
                         "mode": "grouped by @serve.batch, run in turn (one image per pipeline call)"
                         if self.limits.max_batch_size > 1 else "off"},
            "limits": asdict(self.limits),
            "replica": {"pid": os.getpid(), "node": context.get_node_id(), "in_flight": self.in_flight,
                        "served": self.served, "up_s": round(time.time() - self.started, 1)},
            "versions": versions(),
        }


def _bind_serve_grpc_to_loopback():
    """On a local single-node Ray (which bodyrt keeps on 127.0.0.1), bind the replica's
    inter-deployment gRPC server to 127.0.0.1 too. Ray Serve starts it on "[::]:0", every interface,
    with no option to change that; the server starts after this constructor returns."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return  # a cluster: replicas are reached on the node's address
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError:
        return
    bind = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False):
        return

    def bind_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address[len("[::]:"):]
        return bind(server, address)

    bind_loopback.loopback_only = True
    serve_replica.add_port_to_grpc_server = bind_loopback


# ----------------------------------------------------------------------------------------------------
# Starting and stopping


def _require_serve():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise BodyrtError('bodyrt serve needs Ray Serve: pip install ".[serve]" from a bodyrt checkout '
                          '(or pip install "ray[serve]")') from None


def build_app(settings: ServeSettings):
    """The Ray Serve application for these settings (deploy it with serve.run, or from a config)."""
    _require_serve()
    from ray import serve

    limits = asdict(settings.limits)
    deployment = serve.deployment(
        BodyrtReplica,
        name=DEPLOYMENT_NAME,
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica},
        # enough requests on a replica at once for a batch to fill; more wait in the proxy
        max_ongoing_requests=max(2, 2 * settings.limits.max_batch_size),
        user_config=limits,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=5.0,
    )
    # Serve gives every serve.run a random code version, which restarts all replicas even when only
    # the user_config changed. A version naming what a replica opens (Serve's internal option, stable
    # in the pinned ray release) makes a change of limits or replica count an update in place.
    version = "|".join([os.path.abspath(settings.bundle), _manifest_digest(settings.bundle), settings.backend,
                        settings.precision, f"{settings.cpus_per_replica:g}", _bodyrt_version()])
    try:
        deployment = deployment.options(version=version, _internal=True)
    except (TypeError, ValueError):  # another Ray release: every redeploy restarts the replicas
        pass
    # the limits travel only as user_config, so that changing them never reopens the bundle
    return deployment.bind(os.path.abspath(settings.bundle), settings.backend, settings.precision)


def _manifest_digest(bundle) -> str:
    from bodyrt.runtime.bundle import MANIFEST_NAME, sha256_of

    return sha256_of(os.path.join(bundle, MANIFEST_NAME))[:16]


def _bodyrt_version() -> str:
    from bodyrt import __version__

    return __version__


@dataclass
class Service:
    """A running bodyrt service; stop() removes it (and the Ray instance, if this process started it)."""

    url: str
    settings: ServeSettings
    started_ray: bool

    def stop(self):
        import ray
        from ray import serve

        try:
            if self.started_ray:
                serve.shutdown()
            else:
                serve.delete(self.settings.app_name)
        finally:
            if ray.is_initialized():
                ray.shutdown()


def start_service(settings: ServeSettings) -> Service:
    """Verify the bundle, connect to (or start) Ray, start Serve's HTTP proxy and deploy the replicas.

    The bundle is checked here first (format, every file's sha256), so a tampered bundle stops the
    service before any replica starts; each replica verifies it again where it runs.
    """
    from bodyrt.runtime.backends import stage_plan
    from bodyrt.runtime.bundle import read_bundle

    settings.check()
    stage_plan(read_bundle(settings.bundle), settings.precision)  # refuses a tampered bundle, a missing int8
    _require_serve()
    started_ray = _connect_ray(settings)
    try:
        from ray import serve

        serve.start(http_options={"host": settings.host, "port": settings.port,
                                  # the proxy's own limit, over the replica's 504 so that one speaks first
                                  "request_timeout_s": settings.limits.request_timeout_s + 5.0})
        deploy(settings)
    except BaseException:
        if started_ray:
            _shutdown_quietly()
        raise
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    return Service(url=f"http://{host}:{settings.port}", settings=settings, started_ray=started_ray)


def deploy(settings: ServeSettings):
    """Deploy (or update in place) the application on the connected Ray instance; wait until it runs.

    Changing only the request limits reconfigures the running replicas; changing the replica count
    adds or removes replicas; anything else replaces them.
    """
    from ray import serve

    try:
        serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
    except RuntimeError as error:  # a replica failed to start (its error is in the message)
        raise BundleError(f"{settings.bundle}: the service did not start: {_first_lines(str(error))}") from None


def _connect_ray(settings: ServeSettings) -> bool:
    """Connect to settings.address, or start a local single-node Ray; True if this process started it."""
    if settings.address:
        import ray

        ray.init(address=settings.address, configure_logging=False, log_to_driver=False)
        return False
    # A local instance is a single node: Ray then binds and talks on 127.0.0.1 only, not on the
    # machine's network address. The variable is read when ray is imported, and by its subprocesses.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    # address="local": a new instance, even when RAY_ADDRESS or an earlier `ray start` names another
    ray.init(address="local", num_cpus=max(1, math.ceil(settings.replicas * settings.cpus_per_replica)),
             include_dashboard=False, configure_logging=False, log_to_driver=False)
    return True


def _shutdown_quietly():
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out of an error
        pass
    ray.shutdown()


def _first_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[:count])


def serve_forever(settings: ServeSettings):
    """`bodyrt serve`: start, print where, block until interrupted (Ctrl-C or SIGTERM), then stop.

    SIGINT and SIGTERM both end in service.stop(), so a stopped `bodyrt serve` leaves no Ray process
    behind (a background job started by a script ignores SIGINT: stop it with SIGTERM)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    service = start_service(settings)
    signal.signal(signal.SIGTERM, interrupt)  # after ray.init, which installs its own
    print(f"bodyrt: serving {settings.bundle} at {service.url} ({settings.replicas} replica(s), "
          f"{settings.cpus_per_replica:g} CPU each; batches of up to {settings.limits.max_batch_size}); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        service.stop()
