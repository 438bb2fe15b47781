"""bodyrt serve on a real local Ray instance: results equal the Python runtime's, bad requests get a
4xx with the reason, limits are configurable, a killed replica is replaced, a tampered bundle never
starts. One Ray instance (2 CPUs, two 1-CPU replicas, loopback only) serves the whole module and is
shut down at its end."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from bodyrt.errors import BundleError, InputError
from bodyrt.images import decode_image, load_image
from bodyrt.serve import RequestLimits, ServeSettings, parse_boxes

LIMITS = RequestLimits(max_upload_bytes=2 * 1024 * 1024, max_image_pixels=4_000_000, max_persons=4,
                       request_timeout_s=110.0, max_batch_size=4, batch_wait_ms=20.0)


def _png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _scene_image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth seeded colours with noise: varied enough that different boxes give different people."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([rows / height, columns / width, (rows + columns) / (height + width)], axis=2) * 200
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Without Ray: decoding uploads, boxes, settings, a tampered bundle


def test_decode_image_equals_load_image_for_png_and_exif_rotated_jpeg(tmp_path):
    rgb = _scene_image(1, 30, 40)
    (tmp_path / "a.png").write_bytes(_png(rgb))
    np.testing.assert_array_equal(decode_image(_png(rgb)), rgb)
    np.testing.assert_array_equal(decode_image((tmp_path / "a.png").read_bytes()), load_image(tmp_path / "a.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    decoded = decode_image((tmp_path / "phone.jpg").read_bytes())
    assert decoded.shape == (40, 30, 3)
    np.testing.assert_array_equal(decoded, load_image(tmp_path / "phone.jpg"))


def test_decode_image_shares_the_file_checks():
    png = bytearray(_png(_scene_image(2, 20, 20)))
    png[40] ^= 0xFF  # inside the image data: a chunk checksum no longer matches
    with pytest.raises(InputError, match="upload: not a readable image"):
        decode_image(bytes(png), name="upload")
    with pytest.raises(InputError, match="too large"):
        decode_image(_png(_scene_image(3, 30, 40)), max_pixels=1000)
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="BMP")
    with pytest.raises(InputError, match="unsupported image format BMP"):
        decode_image(buffer.getvalue())


def test_parse_boxes_accepts_lists_and_defaults_to_the_whole_image():
    assert parse_boxes(None, 64, 48, 4).tolist() == [[0, 0, 64, 48]]
    assert parse_boxes("[1, 2, 30, 40]", 64, 48, 4).tolist() == [[1, 2, 30, 40]]
    boxes = parse_boxes("[[1, 2, 30, 40], [-5, 0, 10.5, 1e1]]", 64, 48, 4)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)


@pytest.mark.parametrize("text, reason", [
    ("[[1, 2, 3]", "not JSON"),
    ("[]", "non-empty list"),
    ('{"x": 1}', "non-empty list"),
    ("[[1, 2, 3]]", r"boxes\[0\]: expected four numbers"),
    ('[[0, 0, 10, 10], [0, 0, "a", 5]]', r"boxes\[1\]: expected four numbers"),
    ("[[0, 0, NaN, 10]]", "not finite"),
    ("[[10, 0, 5, 10]]", "empty or inverted"),
    ("[[100, 0, 120, 10]]", "outside the 64x48 image"),
    (json.dumps([[0, 0, 10, 10]] * 5), "at most 4 persons"),
])
def test_parse_boxes_names_what_is_wrong(text, reason):
    with pytest.raises(InputError, match=reason):
        parse_boxes(text, 64, 48, 4)


def test_settings_are_checked_before_anything_starts(bundle_dir):
    from bodyrt.serve import start_service

    with pytest.raises(InputError, match="--replicas"):
        start_service(ServeSettings(bundle=str(bundle_dir), replicas=0))
    with pytest.raises(InputError, match="request_timeout_s"):
        start_service(ServeSettings(bundle=str(bundle_dir), limits=RequestLimits(request_timeout_s=0)))
    with pytest.raises(InputError, match="--backend tensorrt"):
        start_service(ServeSettings(bundle=str(bundle_dir), backend="tensorrt"))


@pytest.fixture
def tampered_bundle(bundle_dir, tmp_path):
    """The demo bundle with one byte of one stage graph changed (the other files linked, not copied)."""
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for path in bundle_dir.iterdir():
        if path.name == "face.onnx":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            (tampered / path.name).write_bytes(bytes(data))
        elif path.is_file():
            os.symlink(path, tampered / path.name)
        else:
            shutil.copytree(path, tampered / path.name)
    return tampered


def test_tampered_bundle_refuses_to_start(tampered_bundle):
    from bodyrt.serve import start_service

    with pytest.raises(BundleError, match="face.onnx: sha256 does not match"):
        start_service(ServeSettings(bundle=str(tampered_bundle), port=_free_port()))
    done = subprocess.run([sys.executable, "-m", "bodyrt.cli", "serve", "--bundle", str(tampered_bundle),
                           "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "face.onnx: sha256 does not match" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------------
# A real local Ray instance


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(bundle_dir):
    """Two 1-CPU replicas of the demo bundle on a local 2-CPU Ray, batching on; stopped at the end."""
    pytest.importorskip("ray.serve", reason='needs Ray Serve: pip install ".[serve]"')
    from bodyrt.serve import start_service

    settings = ServeSettings(bundle=str(bundle_dir), replicas=2, cpus_per_replica=1.0, limits=LIMITS,
                             host="127.0.0.1", port=_free_port(), app_name="bodyrt-test")
    running = start_service(settings)
    try:
        yield running
    finally:
        running.stop()
        import ray

        assert not ray.is_initialized()


@pytest.fixture(scope="module")
def python_runtime(bundle_dir):
    """The in-process runtime with the replicas' thread count, the reference for every served result."""
    from bodyrt.runtime import open_bundle

    return open_bundle(bundle_dir, threads=1)


def _post(service, body=None, files=None, data=None, timeout=120, **params):
    import requests

    return requests.post(f"{service.url}/v1/infer", params=params, data=body if files is None else data,
                         files=files, timeout=timeout)


def _get(service, path, timeout=30):
    import requests

    return requests.get(f"{service.url}{path}", timeout=timeout)


def test_health_and_info_state_the_replica(service, bundle_dir):
    assert _get(service, "/healthz").json() == {"status": "ok"}
    info = _get(service, "/v1/info").json()
    assert info["bundle"] == str(bundle_dir)
    assert (info["backend"], info["precision"], info["cpus"], info["threads"]) == ("onnxruntime", "fp32", 1.0, 1)
    assert info["batching"]["max_batch_size"] == 4 and info["limits"]["max_persons"] == 4
    assert info["versions"]["ray"] and info["versions"]["onnxruntime"] and info["untrained"] is True


def _descendants(root: int) -> set:
    """Process ids under root (Ray's GCS, raylet, workers, proxy and replicas are all started from here)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    parent = int(stream.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _listening_addresses(pids: set) -> set:
    """Local addresses of the TCP sockets in LISTEN state that these processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as stream:
            for line in stream.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    addresses.add(fields[1].split(":")[0])
    return addresses


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_ray_and_the_proxy_listen_on_loopback_only(service):
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    addresses = _listening_addresses(_descendants(os.getpid()) | {os.getpid()})
    assert addresses, "found no listening socket of the Ray processes"
    assert addresses <= loopback, f"Ray or Serve listens beyond 127.0.0.1: {addresses - loopback}"


def _served_arrays(response, answer_format):
    assert response.status_code == 200, response.text
    if answer_format == "npz":
        saved = np.load(io.BytesIO(response.content))
        return {name: saved[name] for name in saved.files}
    people = response.json()["people"]
    return {name: np.asarray([person[name] for person in people], dtype=np.float32)
            for name in people[0] if name != "box"} | {"person_boxes": np.asarray([p["box"] for p in people])}


def test_concurrent_requests_equal_the_python_runtime(service, python_runtime):
    scenes = [  # (image bytes, boxes or None for the whole image)
        (_png(_scene_image(10, 240, 320)), [[40, 20, 200, 230]]),
        (_jpeg(_scene_image(11, 300, 260)), None),
        (_png(_scene_image(12, 200, 360)), [[0, 0, 180, 200], [150, 10, 350, 190]]),
    ]
    expected = []
    for image_bytes, boxes in scenes:
        image = decode_image(image_bytes)
        height, width = image.shape[:2]
        expected.append(python_runtime(image, parse_boxes(json.dumps(boxes) if boxes else None, width, height, 4))
                        .outputs)
    requests_to_send = []  # each scene twice: raw body + JSON, multipart + .npz with vertices
    for index, (image_bytes, boxes) in enumerate(scenes):
        box_text = json.dumps(boxes) if boxes else None
        requests_to_send.append((index, "json", dict(body=image_bytes, **({"boxes": box_text} if boxes else {}))))
        form = {"boxes": box_text} if boxes else {}
        requests_to_send.append((index, "npz", dict(files={"image": ("scene.img", image_bytes)}, data=form,
                                                    format="npz", vertices="true")))
    answers = [None] * len(requests_to_send)

    def send(slot, arguments):
        answers[slot] = _post(service, **arguments)

    threads = [threading.Thread(target=send, args=(slot, arguments))
               for slot, (_, _, arguments) in enumerate(requests_to_send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for (index, answer_format, _), answer in zip(requests_to_send, answers):
        served = _served_arrays(answer, answer_format)
        names = set(expected[index]) - ({"vertices"} if answer_format == "json" else set())
        assert names <= set(served), f"missing results {names - set(served)}"
        assert ("vertices" in served) == (answer_format == "npz")
        for name in names:
            np.testing.assert_allclose(served[name], expected[index][name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"scene {index} {answer_format} {name}")


def test_bad_requests_get_4xx_with_the_reason(service):
    image = _png(_scene_image(20, 120, 100))
    cases = [
        (_post(service, body=b"certainly not an image"), 400, "image: not a readable image"),
        (_post(service, body=image[: len(image) // 2]), 400, "image: not a readable image"),
        (_post(service, body=b""), 400, "empty request body"),
        (_post(service, body=image, boxes="[[0, 0, 50]]"), 400, r"boxes[0]: expected four numbers"),
        (_post(service, body=image, boxes="[[0, 0, 50, 50"), 400, "boxes: not JSON"),
        (_post(service, body=image, boxes="[[500, 500, 600, 600]]"), 400, "outside the 100x120 image"),
        (_post(service, body=image, boxes=json.dumps([[0, 0, 50, 50]] * 5)), 400, "at most 4 persons"),
        (_post(service, body=image, format="xml"), 400, "format: expected json or npz"),
        (_post(service, body=image, vertices="maybe"), 400, "vertices: expected true or false"),
        (_post(service, files={"picture": ("a.png", image)}), 400, 'no "image" field'),
        (_post(service, body=b"\0" * (LIMITS.max_upload_bytes + 1)), 413, "over the limit of 2097152 bytes"),
        (_post(service, body=_png(np.zeros((2100, 2000, 3), np.uint8))), 400, "too large"),
        (_get(service, "/v1/infer"), 405, "takes POST"),
        (_get(service, "/v2/anything"), 404, "no route /v2/anything"),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, (reason, response.text)
        assert reason in response.json()["error"]


def _replica_pids(service, rounds=12) -> set:
    return {_get(service, "/v1/info").json()["replica"]["pid"] for _ in range(rounds)}


def test_request_time_limit_is_configurable_without_restarting_replicas(service):
    from bodyrt.serve import deploy

    image, boxes = _png(_scene_image(30, 240, 320)), json.dumps([[0, 0, 160, 240], [160, 0, 320, 240]])
    pids = _replica_pids(service)
    deploy(replace(service.settings, limits=replace(LIMITS, request_timeout_s=0.05)))
    try:
        answer = _post(service, body=image, boxes=boxes)
        assert answer.status_code == 504
        assert "longer than the request time limit of 0.05 s" in answer.json()["error"]
        assert _replica_pids(service) <= pids  # the limits were changed on the running replicas
    finally:
        deploy(service.settings)
    assert _post(service, body=image, boxes=boxes).status_code == 200


def test_killed_replica_is_replaced_and_its_requests_fail_without_hanging(service, python_runtime):
    from ray import serve

    from bodyrt.serve import DEPLOYMENT_NAME

    image_rgb = _scene_image(40, 240, 320)
    image, boxes = _png(image_rgb), [[0, 0, 160, 240], [160, 0, 320, 240], [80, 0, 240, 240]]
    victim = None
    for _attempt in range(3):  # until a replica is caught with a request in flight
        answers, senders = [], [threading.Thread(target=lambda: answers.append(
            _post(service, body=image, boxes=json.dumps(boxes)))) for _ in range(2)]
        for sender in senders:
            sender.start()
        while victim is None and any(sender.is_alive() for sender in senders):
            replica = _get(service, "/v1/info").json()["replica"]
            if replica["in_flight"]:
                victim = replica["pid"]
                os.kill(victim, signal.SIGKILL)
        for sender in senders:
            sender.join(timeout=LIMITS.request_timeout_s + 30)
        assert not any(sender.is_alive() for sender in senders), "a request hung after its replica died"
        if victim is not None:
            break
    assert victim is not None, "no replica reported a request in flight"
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses[-1] >= 500, statuses  # the killed replica's request failed, with a status
    assert all(status in (200, 500, 502, 503, 504) for status in statuses), statuses

    deadline, running = time.monotonic() + 120, 0
    while time.monotonic() < deadline:
        deployment = serve.status().applications[service.settings.app_name].deployments[DEPLOYMENT_NAME]
        running = deployment.replica_states.get("RUNNING", 0)
        if running == 2 and deployment.status == "HEALTHY":
            break
        time.sleep(0.5)
    assert running == 2, "the killed replica was not replaced"
    assert victim not in _replica_pids(service)
    served = _served_arrays(_post(service, body=image, boxes=json.dumps(boxes), format="npz"), "npz")
    expected = python_runtime(image_rgb, np.asarray(boxes, np.float32)).outputs
    np.testing.assert_allclose(served["pinhole_translation"], expected["pinhole_translation"], rtol=1e-5, atol=1e-5)
