"""Reliability catalogue: bad inputs a careless or hostile user gives, one case each.

Every case asserts three things: the exit status (or the error type, for library calls), a one-line
message that names the cause (no traceback), and the state of the output folder afterwards (nothing
touched, nothing half-written, no staging folder left). Areas:

    images       corrupted PNG/JPEG, decompression bombs, pipes, text files; the good image still runs
    boxes        boxes outside or inverted; float notation argparse mistakes for options
    bundles      modified graphs; writing into a folder bodyrt did not write
    checkpoints  flipped bytes (zip CRCs), malicious pickles, NaN weights, wrong files
    outputs      export --out: a foreign folder, a file, below a file, '', read-only, '.', a full disk
    signals      SIGTERM cleans up; after SIGKILL the next export removes the stale staging folder
    concurrency  staging folders of running exports are left alone; cached OpenVINO blobs verified
    resources    --threads bounded, --repeats 0
    C calls      in tests/test_capi.py (EXPECTED_ERRORS: NULLs, strides, threads, use after destroy)

Most refusals happen before any export starts, so the cases run in seconds; the export-folder
mechanics run on a one-layer model through the same build_bundle every architecture uses.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bodyrt.cli import main
from bodyrt.errors import ExportError
from bodyrt.export.out_folder import MARKER_NAME, read_marker, write_marker
from bodyrt.files import current_umask


# ------------------------------------------------------------------------------------------- helpers

def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `bodyrt ARGV` in this process; argparse errors exit with 2."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The last line of stderr, after checking nothing looks like a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert lines, "no message at all"
    return lines[-1]


def snapshot(folder: Path) -> dict:
    """relative path -> (mode, crc32 of contents) of everything under folder, hidden entries too."""
    state = {}
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        state[str(path.relative_to(folder))] = (path.stat().st_mode, zlib.crc32(data))
    return state


def no_staging_left(parent: Path) -> bool:
    return not [entry for entry in parent.iterdir() if ".partial-" in entry.name or ".old-" in entry.name]


# -------------------------------------------------------------------------------- outputs (export)

def _foreign_web_app(root: Path) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    (app / "index.html").write_text("<html>my work</html>")
    return app


def _file(root: Path) -> Path:
    (root / "notes.txt").write_text("keep me")
    return root / "notes.txt"


def _marked_bundle_with_a_foreign_file(root: Path) -> Path:
    folder = root / "bundle"
    folder.mkdir()
    (folder / "body.onnx").write_bytes(b"graph")
    write_marker(folder, "complete", ["body.onnx"])
    (folder / "thesis.tex").write_text("months of work")
    return folder


# case -> (make the --out argument under a scratch root, exit status, message pattern)
EXPORT_OUT_CASES = {
    "folder_with_a_foreign_manifest_json": (_foreign_web_app, 1,
                                            r"app: holds index.html, manifest.json, which bodyrt did not write"),
    "existing_file": (_file, 1, r"notes.txt: exists and is not a folder"),
    "below_a_file": (lambda root: _file(root) / "bundle", 1, r"notes.txt is a file, not a folder"),
    "empty_string": (lambda root: "", 1, r"--out is empty"),
    "marked_bundle_holding_a_foreign_file": (_marked_bundle_with_a_foreign_file, 1,
                                             r"holds thesis.tex, which bodyrt did not write"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_OUT_CASES))
def test_export_out_is_checked_before_anything_is_read_or_written(case, tmp_path, capsys, monkeypatch):
    make, status, pattern = EXPORT_OUT_CASES[case]
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    out = make(root)
    before = snapshot(root)
    # The checkpoint does not exist: a refusal that came only after reading it would name it instead.
    code, stderr = run_cli(["export", "--checkpoint", tmp_path / "missing.ckpt", "--body-model",
                            tmp_path / "missing.npz", "--out", out], capsys)
    assert code == status
    assert re.search(pattern, error_line(stderr)), stderr
    assert snapshot(root) == before  # nothing renamed, deleted or added


def _with_private_mount(command, folder: Path, options: str) -> subprocess.CompletedProcess:
    """Run command with a tmpfs mounted at folder (options: "ro", "size=64k", ...) in a mount namespace
    of its own: the mount is seen by nothing else and vanishes with the process. Needs root (CI and
    these machines run as root) and util-linux's unshare; skipped otherwise."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("a read-only or full file system is simulated with a private tmpfs mount, which needs root")
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = [unshare, "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"', str(folder), *map(str, command)]
    done = subprocess.run(wrapped, capture_output=True, text=True, timeout=300)
    if "mount:" in done.stderr and done.returncode == 32:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    return done


def test_export_into_a_read_only_folder_is_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    command = [sys.executable, "-m", "bodyrt.cli", "export", "--checkpoint", tmp_path / "missing.ckpt",
               "--body-model", tmp_path / "missing.npz", "--out", locked / "bundle"]
    done = _with_private_mount(command, locked, "ro,size=64k")
    assert done.returncode == 1, done.stderr
    assert re.search(r"locked/bundle: cannot write in .*locked \(permission denied or read-only\)",
                     error_line(done.stderr)), done.stderr
    assert sorted(tmp_path.iterdir()) == [locked] and list(locked.iterdir()) == []


def test_write_errors_outside_the_up_front_checks_are_one_line(tmp_path, capsys):
    """The CLI's last line of defence: an OSError from any command is one line naming the path."""
    _file(tmp_path)
    before = snapshot(tmp_path)
    code, stderr = run_cli(["build-capi", "--out", tmp_path / "notes.txt" / "capi"], capsys)
    assert code == 1
    assert re.search(r"notes.txt/capi: Not a directory", error_line(stderr)), stderr
    assert snapshot(tmp_path) == before


# A one-layer "stage" through build_bundle, the code every architecture's export goes through.

class _Scale(torch.nn.Module):
    def __init__(self, size: int = 8):
        super().__init__()
        self.linear = torch.nn.Linear(size, size)

    def forward(self, x):
        return self.linear(x)


def _tiny_bundle(out_dir, size: int = 8):
    from bodyrt.export.bundle import build_bundle

    torch.manual_seed(0)
    spec = {"name": "body", "module": _Scale(size).eval(), "inputs": ["x"], "outputs": ["y"],
            "exporter": "torchscript", "tolerance": 1e-4}
    samples = {"x": torch.randn(2, size)}

    def manifest(files, graphs):  # the smallest manifest the format-2 parser accepts
        return {"format": "bodyrt-bundle", "format_version": 2, "arch": "tiny", "created": "2026-12-04T00:00:00Z",
                "tools": {}, "source": {"checkpoint": "none", "checkpoint_sha256": "0" * 64, "body_model": "none",
                                       "body_model_sha256": "0" * 64, "untrained": True},
                "preprocessing": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "pixel_scale": 255.0},
                "fp32_stages": [], "stages": [{"name": "body", "file": files["body"], **graphs["body"]}],
                "steps": [{"name": "body_crop", "op": "body_crop", "boxes": "person_boxes", "crops": "x",
                           "transforms": "crop_transforms", "crop_size": 8, "box_scale": 1.2},
                          {"name": "body", "op": "graph", "stage": "body"}],
                "results": ["y"], "mesh": {"model": "none", "num_vertices": 3, "faces": [[0, 1, 2]]}, "files": {}}

    return build_bundle(out_dir, [spec], samples, 1, manifest)


def test_a_new_bundle_carries_the_marker_listing_its_files(tmp_path):
    out = _tiny_bundle(tmp_path / "bundle")
    marker = read_marker(out)
    assert marker["state"] == "complete"
    assert marker["files"] == ["body.onnx", "manifest.json"]
    assert sorted(entry.name for entry in out.iterdir()) == [MARKER_NAME, "body.onnx", "manifest.json"]
    assert no_staging_left(tmp_path)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~current_umask()  # not mkdtemp's 0700: others may read it


def test_export_replaces_a_bundle_it_wrote(tmp_path):
    out = _tiny_bundle(tmp_path / "bundle", size=8)
    first = (out / "body.onnx").read_bytes()
    _tiny_bundle(out, size=16)
    assert (out / "body.onnx").read_bytes() != first
    assert no_staging_left(tmp_path)


def test_a_bundle_from_before_the_marker_is_replaced_only_when_it_holds_nothing_else(tmp_path):
    out = _tiny_bundle(tmp_path / "bundle", size=8)
    (out / MARKER_NAME).unlink()  # as exported by an older bodyrt
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds notes.txt, which bodyrt did not write"):
        _tiny_bundle(out, size=16)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    _tiny_bundle(out, size=16)  # only its manifest and the files it lists: bodyrt's own
    assert read_marker(out)["state"] == "complete" and no_staging_left(tmp_path)


def test_export_into_the_empty_working_folder_fills_it_in_place(tmp_path, monkeypatch):
    """`bodyrt export --out .` in an empty folder: the folder itself (and a shell in it) stays."""
    folder = tmp_path / "empty"
    folder.mkdir()
    inode = folder.stat().st_ino
    monkeypatch.chdir(folder)
    out = _tiny_bundle(".")
    assert out == folder
    assert folder.stat().st_ino == inode
    assert sorted(entry.name for entry in folder.iterdir()) == [MARKER_NAME, "body.onnx", "manifest.json"]
    assert no_staging_left(tmp_path)


def test_a_full_disk_leaves_nothing(tmp_path):
    """The export's folder on a 64 KiB file system, the graph 256 KiB: ENOSPC mid-export gives one line
    naming the cause, the staging folder is gone and no bundle appears."""
    disk = tmp_path / "disk"
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bodyrt.errors import BodyrtError
from test_reliability import _tiny_bundle
try:
    _tiny_bundle({str(disk / 'bundle')!r}, size=256)
except BodyrtError as error:
    print(f"bodyrt: error: {{error}}", file=sys.stderr)
    sys.exit(1)
"""
    done = _with_private_mount([sys.executable, "-c", script], disk, "size=64k")
    assert done.returncode == 1, done.stderr
    assert re.search(r"No space left on device", error_line(done.stderr)), done.stderr
    assert list(disk.iterdir()) == []  # the mount is gone; nothing was written outside it either


# ------------------------------------------------------------------------------ concurrency, stale

def _staging_of(out: Path, pid: int, state: str = "partial") -> Path:
    folder = out.parent / f".{out.name}.partial-{pid}"
    folder.mkdir()
    (folder / "body.onnx").write_bytes(b"half a graph")
    write_marker(folder, state)
    marker = json.loads((folder / MARKER_NAME).read_text())
    marker["pid"] = pid
    (folder / MARKER_NAME).write_text(json.dumps(marker))
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_a_killed_export_is_removed_and_others_are_kept(tmp_path):
    out = tmp_path / "bundle"
    stale = _staging_of(out, _dead_pid())
    running = _staging_of(out, os.getppid())  # another export still running: left alone
    foreign = tmp_path / f".{out.name}.partial-mine"  # our name pattern, no marker: not ours
    foreign.mkdir()
    (foreign / "data").write_text("x")
    _tiny_bundle(out)
    assert not stale.exists()
    assert running.is_dir() and foreign.is_dir()
    assert (out / "body.onnx").is_file()


# ----------------------------------------------------------------------------------------- signals

def _start_export(demo_files, out: Path) -> subprocess.Popen:
    checkpoint, body_model = demo_files
    return subprocess.Popen([sys.executable, "-m", "bodyrt.cli", "export", "--checkpoint", str(checkpoint),
                             "--body-model", str(body_model), "--out", str(out), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_staging(process, parent: Path, timeout: float = 240.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [entry for entry in parent.iterdir() if ".partial-" in entry.name]
        if found and (found[0] / MARKER_NAME).is_file():
            return found[0]
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    process.kill()
    pytest.fail("the export never created its staging folder")


def test_sigterm_during_export_removes_the_staging_folder(demo_files, tmp_path):
    out = tmp_path / "bundle"
    process = _start_export(demo_files, out)
    _wait_for_staging(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGTERM
    assert error_line(stderr) == "bodyrt: stopped by signal SIGTERM"
    assert sorted(tmp_path.iterdir()) == []


def test_after_sigkill_the_next_export_removes_the_stale_staging_folder(demo_files, tmp_path, capsys):
    out = tmp_path / "bundle"
    process = _start_export(demo_files, out)
    staging = _wait_for_staging(process, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    assert staging.is_dir()  # SIGKILL cannot be caught
    # The next export removes it before anything else, even one that then fails on its checkpoint.
    code, stderr = run_cli(["export", "--checkpoint", tmp_path / "missing.ckpt", "--body-model", demo_files[1],
                            "--out", out], capsys)
    assert code == 1
    assert "missing.ckpt" in error_line(stderr)
    assert sorted(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- checkpoints

class _RunsCode:
    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (os.system, (f"touch {self.witness}",))


def _flipped_zip_member(root: Path) -> Path:
    path = root / "flipped.ckpt"
    torch.save({"model": {"weight": torch.arange(50_000, dtype=torch.float32)}}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensor's storage: torch.load would read a wrong weight
    path.write_bytes(bytes(data))
    return path


def _malicious_pickle(root: Path) -> Path:
    path = root / "evil.ckpt"
    torch.save({"model": {"weight": torch.zeros(3)}, "payload": _RunsCode(root / "code-ran")}, path)
    return path


def _nan_weight(root: Path) -> Path:
    from bodyrt.export.checkpoint import NETWORK_PREFIXES, expected_shapes

    key, shape = next((key, shape) for key, shape in expected_shapes("body").items()
                      if not key.endswith("num_batches_tracked"))
    tensor = torch.zeros(shape)
    tensor.view(-1)[7] = float("nan")
    path = root / "nan.ckpt"
    torch.save({"model": {NETWORK_PREFIXES["body"] + key: tensor}}, path)
    return path


def _text(root: Path) -> Path:
    (root / "notes.txt").write_text("not a checkpoint\n")
    return root / "notes.txt"


# case -> (make the checkpoint, message pattern); each is refused before the export starts
CHECKPOINT_CASES = {
    "byte_flipped_inside_the_zip": (_flipped_zip_member,
                                    r"flipped.ckpt: corrupted checkpoint: member flipped/data/0 fails its CRC-32"),
    "malicious_pickle": (_malicious_pickle, r"evil.ckpt: refused: it holds a pickled Python object \(posix.system\)"),
    "nan_weight": (_nan_weight, r"nan.ckpt: tensor 'smplx.backbone.\S+' holds 1 NaN or infinite value"),
    "text_file": (_text, r"notes.txt: not a PyTorch checkpoint \(neither a zip archive"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoints_are_refused_naming_the_cause(case, synthetic_smplx_path, tmp_path, capsys):
    make, pattern = CHECKPOINT_CASES[case]
    checkpoint = make(tmp_path)
    code, stderr = run_cli(["export", "--checkpoint", checkpoint, "--body-model", synthetic_smplx_path,
                            "--out", tmp_path / "bundle"], capsys)
    message = error_line(stderr)
    assert code == 1
    assert re.search(pattern, message), message
    assert "weights_only" not in message and "allow_pickle" not in message  # no nudge towards running code
    assert not (tmp_path / "code-ran").exists()
    assert not (tmp_path / "bundle").exists() and no_staging_left(tmp_path)


def test_body_model_mismatches_are_named(demo_files, tmp_path, capsys):
    from bodyrt.export.fixtures.body_models import write_smpl_model

    smpl = write_smpl_model(tmp_path / "smpl")
    code, stderr = run_cli(["export", "--checkpoint", demo_files[0], "--body-model", smpl,
                            "--out", tmp_path / "bundle"], capsys)
    assert code == 1
    assert re.search(r"SMPL_NEUTRAL.pkl: an SMPL model; ExPose needs an SMPL-X model", error_line(stderr))
    text = _text(tmp_path)
    code, stderr = run_cli(["export", "--checkpoint", demo_files[0], "--body-model", text,
                            "--out", tmp_path / "bundle"], capsys)
    assert code == 1
    assert re.search(r"notes.txt: not a readable SMPL or SMPL-X model file \(neither an .npz archive nor a pickled",
                     error_line(stderr))
    assert not (tmp_path / "bundle").exists() and no_staging_left(tmp_path)


def test_convert_given_a_text_file_says_it_is_not_an_npz(synthetic_smplx_path, tmp_path, capsys):
    text = _text(tmp_path)
    code, stderr = run_cli(["convert", "smpl-to-smplx", text, "--correspondence", text, "--smplx-model",
                            synthetic_smplx_path, "--out", tmp_path / "fits.npz"], capsys)
    message = error_line(stderr)
    assert code == 1
    assert re.search(r"notes.txt: not an .npz input file \(not a zip archive", message), message
    assert "pickle" not in message
    assert not (tmp_path / "fits.npz").exists()


# ------------------------------------------------------------------------------- images and boxes

def _png_with_a_stale_crc(root: Path) -> Path:
    rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "crc.png")
    data = bytearray((root / "crc.png").read_bytes())
    start = data.find(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    pixels = bytearray(zlib.decompress(bytes(data[start + 4:start + 4 + length])))
    pixels[200:2600] = bytes(2400)
    packed = zlib.compress(bytes(pixels))
    data[start - 4:start + 4 + length] = len(packed).to_bytes(4, "big") + b"IDAT" + packed
    (root / "crc.png").write_bytes(bytes(data))
    return root / "crc.png"


def _garbled_jpeg(root: Path) -> Path:
    """64 random bytes in the middle of the scan: Pillow alone decodes it, most pixels wrong."""
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(root / "garbled.jpg", quality=90)
    data = bytearray((root / "garbled.jpg").read_bytes())
    scan = data.find(b"\xff\xda")
    data[scan + 300:scan + 364] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    (root / "garbled.jpg").write_bytes(bytes(data))
    with Image.open(root / "garbled.jpg") as image:
        image.load()  # Pillow raises nothing: the check is bodyrt's
    return root / "garbled.jpg"


def _bomb(root: Path) -> Path:
    Image.new("L", (12000, 10000)).save(root / "bomb.png")  # 120 Mpx in ~100 kB
    return root / "bomb.png"


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe.png")
    return root / "pipe.png"


def _text_as_jpeg(root: Path) -> Path:
    (root / "letter.jpg").write_text("Dear reader")
    return root / "letter.jpg"


def _truncated_jpeg(root: Path) -> Path:
    Image.new("RGB", (320, 240), (200, 100, 50)).save(root / "cut.jpg", quality=95)
    data = (root / "cut.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root / "cut.jpg"


# case -> (make the image, pattern of its "skipped" line)
IMAGE_CASES = {
    "png_with_a_stale_idat_crc": (_png_with_a_stale_crc, r"crc.png: not a readable image"),
    "garbled_jpeg": (_garbled_jpeg, r"garbled.jpg: corrupted JPEG data \(Corrupt JPEG data"),
    "decompression_bomb": (_bomb, r"bomb.png: image of 12000x10000 pixels is too large"),
    "fifo": (_fifo, r"pipe.png: not a regular file"),
    "text_named_jpg": (_text_as_jpeg, r"letter.jpg: not a readable image"),
    "truncated_jpeg": (_truncated_jpeg, r"cut.jpg: (not a readable image|corrupted JPEG data)"),
}


@pytest.fixture(scope="module")
def image_run(bundle_dir, tmp_path_factory):
    """One `bodyrt run` over every bad image and one good one: (exit status, stderr, out folder)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("images")
    images = [make(root) for make, _ in IMAGE_CASES.values()]
    Image.fromarray(np.full((240, 320, 3), 128, dtype=np.uint8)).save(root / "good.png")
    out = root / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["run", "--bundle", str(bundle_dir), *map(str, images), str(root / "good.png"),
                     "--out", str(out), "--threads", "1"])
    return code, stderr.getvalue(), out


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_images_are_skipped_naming_the_cause(case, image_run):
    code, stderr, out = image_run
    pattern = IMAGE_CASES[case][1]
    assert code == 1
    assert "Traceback" not in stderr
    skipped = [line for line in stderr.splitlines() if line.startswith("bodyrt: skipped")]
    assert [line for line in skipped if re.search(pattern, line)], stderr
    assert re.search(rf"{len(IMAGE_CASES)} of {len(IMAGE_CASES) + 1} images failed", error_line(stderr))
    name = re.search(r"\w+\.(png|jpg)", pattern).group(0)  # the file named in the pattern
    assert not (out / name).exists()  # no result folder for it
    assert (out / "good.png" / "result.json").is_file()  # the good image still ran


# case -> (--box values, message pattern)
BOX_CASES = {
    "outside_in_exponent_notation": (["-1e3", "-1e3", "-5e2", "-5e2"],
                                     r"person box 0 .* = \(-1000, -1000, -500, -500\) is entirely outside the 320x240"),
    "inverted": (["300", "200", "100", "50"], r"person box 0 .* is empty or inverted"),
}


@pytest.mark.parametrize("case", sorted(BOX_CASES))
def test_bad_boxes_are_named(case, bundle_dir, tmp_path, capsys):
    values, pattern = BOX_CASES[case]
    Image.fromarray(np.full((240, 320, 3), 128, dtype=np.uint8)).save(tmp_path / "good.png")
    code, stderr = run_cli(["run", "--bundle", bundle_dir, tmp_path / "good.png", "--box", *values,
                            "--out", tmp_path / "out", "--threads", "1"], capsys)
    message = error_line(stderr)
    assert code == 1
    assert re.search(pattern, message) and "expected 4 arguments" not in message, message
    assert not [path for path in (tmp_path / "out").glob("good_*")]


# ----------------------------------------------------------------------------------------- bundles

@pytest.fixture
def linked_bundle(bundle_dir, tmp_path):
    """A copy of the session bundle whose graphs are hard links (replaced, never written in place)."""
    copy = tmp_path / "bundle"
    copy.mkdir()
    for entry in bundle_dir.iterdir():
        os.link(entry, copy / entry.name)
    return copy


def test_a_modified_graph_is_refused(linked_bundle, tmp_path, capsys):
    face = linked_bundle / "face.onnx"
    data = bytearray(face.read_bytes())
    face.unlink()  # break the link before changing a byte
    data[len(data) // 2] ^= 0x01
    face.write_bytes(bytes(data))
    Image.fromarray(np.full((240, 320, 3), 128, dtype=np.uint8)).save(tmp_path / "good.png")
    code, stderr = run_cli(["run", "--bundle", linked_bundle, tmp_path / "good.png", "--out", tmp_path / "out"],
                           capsys)
    assert code == 1
    assert re.search(r"face.onnx: sha256 does not match the manifest", error_line(stderr))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_quantize_refuses_a_bundle_folder_holding_foreign_files(linked_bundle, tmp_path, capsys):
    (linked_bundle / "my-notes.txt").write_text("mine")
    (tmp_path / "calibration").mkdir()
    Image.fromarray(np.full((240, 320, 3), 128, dtype=np.uint8)).save(tmp_path / "calibration" / "a.png")
    before = snapshot(linked_bundle)
    code, stderr = run_cli(["quantize", "--bundle", linked_bundle, "--calibration", tmp_path / "calibration"],
                           capsys)
    assert code == 1
    assert re.search(r"bundle: holds my-notes.txt, which bodyrt did not write; refusing to write into it",
                     error_line(stderr))
    assert snapshot(linked_bundle) == before


def test_the_session_bundle_carries_a_complete_marker(bundle_dir):
    marker = read_marker(bundle_dir)
    assert marker is not None and marker["state"] == "complete"
    assert set(marker["files"]) == {"manifest.json", *json.loads((bundle_dir / "manifest.json").read_text())["files"]}


# --------------------------------------------------------------------------------------- resources

# case -> (argv, exit status, message pattern)
RESOURCE_CASES = {
    "threads_negative": (["run", "--bundle", "b", "x.png", "--out", "o", "--threads", "-1"], 2,
                         r"--threads: must be between 1 and \d+ \(this machine's CPUs\), got -1"),
    "threads_huge": (["export", "--checkpoint", "c", "--body-model", "m", "--out", "o", "--threads", "100000"], 2,
                     r"--threads: must be between 1 and \d+ \(this machine's CPUs\), got 100000"),
    "threads_not_a_number": (["bench", "--bundle", "b", "--threads", "many"], 2,
                             r"--threads: must be a whole number, got 'many'"),
    "bench_zero_repeats": (["bench", "--bundle", "b", "--repeats", "0"], 1, r"--repeats must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(RESOURCE_CASES))
def test_resource_arguments_are_bounded(case, tmp_path, capsys, monkeypatch):
    argv, status, pattern = RESOURCE_CASES[case]
    monkeypatch.chdir(tmp_path)
    code, stderr = run_cli(argv, capsys)
    assert code == status
    assert re.search(pattern, error_line(stderr)), stderr
    assert list(tmp_path.iterdir()) == []


def test_the_python_api_bounds_threads_too(bundle_dir):
    from bodyrt.errors import InputError
    from bodyrt.runtime import open_bundle

    with pytest.raises(InputError, match="threads must be between 1 and"):
        open_bundle(bundle_dir, threads=(os.cpu_count() or 1) + 1)


# ------------------------------------------------------------------------------- cache (OpenVINO)

def _small_graph(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["people", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["people", 64])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path, weight, bias


@pytest.mark.parametrize("damage", ["flipped_bytes", "hash_missing"])
def test_a_damaged_cached_openvino_blob_is_recompiled_never_used(damage, tmp_path, caplog):
    from bodyrt.runtime.openvino_backend import OpenVinoRunner, blob_problem, digest_path

    model, weight, bias = _small_graph(tmp_path / "small.onnx")
    x = np.random.default_rng(6).standard_normal((1, 64)).astype(np.float32)
    expected = x @ weight + bias
    cache = tmp_path / "cache"
    OpenVinoRunner(model, threads=1, cache_dir=cache).activate().infer({"x": x})
    (blob,) = cache.glob("*.blob")
    assert digest_path(blob).is_file() and blob_problem(blob, np.fromfile(blob, dtype=np.uint8)) is None
    data = bytearray(blob.read_bytes())
    if damage == "flipped_bytes":
        middle = len(data) // 2
        data[middle:middle + 4096] = bytes(4096)
        blob.write_bytes(bytes(data))
    else:
        digest_path(blob).unlink()
    with caplog.at_level("WARNING", logger="bodyrt"):
        got = OpenVinoRunner(model, threads=1, cache_dir=cache).activate().infer({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert [record for record in caplog.records
            if blob.name in record.getMessage() and "not used" in record.getMessage()], caplog.text
    assert blob_problem(blob, np.fromfile(blob, dtype=np.uint8)) is None  # replaced by a verified blob
