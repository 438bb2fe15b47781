"""`bodyrt run`: images and person boxes in, per-person meshes and parameters out.

With --bundle it runs the torch-free runtime, with --checkpoint the PyTorch reference pipeline; both
write the same files. Output layout (see the README's "Run outputs"):

    OUT/summary-<run id>.json        one per run, never replaced
    OUT/<image path>/                one folder per image, its path mirroring the inputs' folders
        result.json                  what this image's run produced (and the run id that wrote it)
        person<N>_params.npz         parameters, camera, 2D joints (smplx-ready keys)
        person<N>.ply, person<N>.obj the mesh, placed in the scene (--coords)
        overlay.png                  mesh, boxes and 2D joints over the photo (--overlay on)

An image's folder is written under a temporary name and swapped in whole when complete, so a rerun
never leaves files of the previous one (a person fewer leaves no stale person file), and an image
that fails leaves its previous folder and every other image's untouched.
"""

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from bodyrt import __version__
from bodyrt.errors import BodyrtError, InputError
from bodyrt.files import remove_quietly, shared_temporary_folder, write_new_file
from bodyrt.geometry import (DEFAULT_COORDS, COORDS, full_image_camera, project, rotation_matrix_keys,
                             smplx_parameters, to_coords)
from bodyrt.images import load_image, save_png
from bodyrt.inputs import expand_inputs, match_boxes, read_boxes_file
from bodyrt.progress import progress
from bodyrt.runtime.outputs import write_obj, write_params, write_ply

log = logging.getLogger("bodyrt")

RESULT_NAME = "result.json"
RESULT_FORMAT = "bodyrt-image-result"
SUMMARY_FORMAT = "bodyrt-run-summary"
FORMAT_VERSION = 1


def person_boxes_for(image: np.ndarray, boxes) -> np.ndarray:
    """--box values (or the whole image when none) as (N, 4) float32."""
    if not boxes:
        height, width = image.shape[:2]
        return np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _open_pipeline(bundle, checkpoint, body_model, threads, backend="onnxruntime", precision="fp32"):
    """-> (pipeline, {timing name: ms}). A bundle on a CPU backend reports verifying (hashing every
    file) and creating the inference sessions separately."""
    from bodyrt.progress import waiting

    with waiting(f"bodyrt: opening {bundle or checkpoint}"):
        return _open_pipeline_quietly(bundle, checkpoint, body_model, threads, backend, precision)


def _open_pipeline_quietly(bundle, checkpoint, body_model, threads, backend, precision):
    start = time.perf_counter()
    if bundle:
        from bodyrt.runtime import open_bundle
        from bodyrt.runtime.backends import GPU_BACKENDS

        if backend in GPU_BACKENDS:  # one Pipeline on the device executor (crop kernel, engines, one stream)
            from bodyrt.runtime.backends import BACKENDS

            refusal = BACKENDS[backend].precisions.get(precision)
            if refusal:  # a wrong option first, then the machine
                raise InputError(f"--precision {precision} is for the CPU backends; {refusal}")
            check_gpu_driver(backend)
            return open_bundle(bundle, backend=backend, threads=threads, precision=precision), {"open": _ms_since(start)}
        return open_bundle_overlapped(bundle, backend=backend, threads=threads, precision=precision)
    from bodyrt.export.reference import ReferencePipeline

    pipeline = ReferencePipeline(checkpoint, body_model, threads=threads)
    return pipeline, {"open": _ms_since(start)}


def check_gpu_driver(backend: str) -> None:
    """A GPU backend on a machine without a usable NVIDIA driver: say so first, not which Python
    packages are missing (installing them would not help)."""
    from bodyrt.errors import BackendUnavailableError
    from bodyrt.kernels import gpu_available_reason

    reason = gpu_available_reason()
    if reason is not None:
        raise BackendUnavailableError(
            f"--backend {backend} needs an NVIDIA GPU with its driver: {reason} (no NVIDIA driver found); "
            "on this machine use --backend onnxruntime or --backend openvino")


def open_bundle_overlapped(path, backend="onnxruntime", threads=2, precision="fp32"):
    """Open a bundle on a CPU backend, hashing its files while the inference sessions are created.

    Nothing runs before every file's sha256 matched the manifest: a mismatch closes the sessions and
    raises the BundleError of bodyrt.runtime.bundle.read_bundle. Returns (pipeline, {"open": wall ms,
    "open_verify": hashing ms, "open_sessions": session creation ms}); hashing runs in a thread
    (hashlib releases the GIL), so on a machine with a spare core "open" is close to the larger of the
    two rather than their sum.
    """
    from concurrent.futures import ThreadPoolExecutor

    from bodyrt.runtime.backends import open_executor
    from bodyrt.runtime.bundle import read_bundle
    from bodyrt.runtime.pipeline import Pipeline

    start = time.perf_counter()
    unverified = read_bundle(path, verify_hashes=False)  # format and version checks, the file list

    def verify():
        verify_start = time.perf_counter()
        read_bundle(path)
        return _ms_since(verify_start)

    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(verify)
        sessions_start = time.perf_counter()
        try:
            pipeline = Pipeline(unverified, open_executor(unverified, backend, threads=threads, precision=precision))
        except BaseException:
            hashing.result()  # a tampered file explains a session that failed to load: report that first
            raise
        sessions_ms = _ms_since(sessions_start)
        try:
            verify_ms = hashing.result()
        except BaseException:
            pipeline.close()
            raise
    return pipeline, {"open": _ms_since(start), "open_verify": verify_ms, "open_sessions": sessions_ms}


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def new_run_id() -> str:
    """UTC time to the microsecond, e.g. 20261204T150501.123456Z: sortable, one per run."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out_dir}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: folder is not writable")


def run_images(images, out_dir, boxes=None, bundle=None, checkpoint=None, body_model=None, threads=2,
               backend="onnxruntime", precision="fp32", boxes_file=None, min_score=0.5,
               coords=DEFAULT_COORDS, overlay=True, pipeline=None) -> Path:
    """Run every image (files, folders, glob patterns); write results and a summary under out_dir.

    boxes: --box values for every image; boxes_file: per-image boxes (bodyrt.inputs); neither: the
    whole image. An image that cannot be read or run is reported and skipped; the summary records it,
    and InputError is raised at the end (after the others ran) so the CLI exits non-zero.
    pipeline: an already opened pipeline (bundle, checkpoint, backend and precision are then ignored).
    Returns the summary's path.
    """
    run_start = time.perf_counter()
    run_id = new_run_id()
    if coords not in COORDS:
        raise InputError(f"--coords must be one of {', '.join(COORDS)}, got {coords!r}")
    if boxes and boxes_file:
        raise InputError("give --box or --boxes, not both")
    if str(out_dir) == "":
        raise InputError("--out is empty; name the folder to write results to")
    out_dir = Path(out_dir)
    inputs = expand_inputs(images, exclude=out_dir)
    unmatched = []
    if boxes_file:
        unmatched = match_boxes(inputs, read_boxes_file(boxes_file, min_score=min_score), boxes_file)
        if unmatched:
            log.info("%d entries of %s name no image of this run", len(unmatched), boxes_file)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    if pipeline is None:
        pipeline, open_timings = _open_pipeline(bundle, checkpoint, body_model, threads, backend, precision)
    else:
        open_timings = {}
    prepare_out_dir(out_dir)  # after opening: a run that cannot start leaves no empty folder behind
    if getattr(pipeline, "untrained", False):
        print("bodyrt: note: these weights are UNTRAINED (synthetic); meshes are not meaningful.",
              file=sys.stderr)
    settings = {"coords": coords, "overlay": overlay, "crop_size": _body_crop_size(pipeline),
                "required": _promised_results(pipeline), "faces": pipeline.faces, "run_id": run_id,
                "boxes": boxes}
    entries, failures = [], []
    for image in progress(inputs, label="images"):
        if image.error is None:
            try:
                entries.append(_run_image(pipeline, image, out_dir, settings))
                continue
            except BodyrtError as error:
                image.error = str(error) if str(image.path) in str(error) else f"{image.path}: {error}"
            except OSError as error:
                image.error = f"{image.path}: writing its results failed ({error})"
        failures.append(image.error)
        entries.append({"image": str(image.path), "status": "failed", "error": image.error})
        print(f"bodyrt: skipped {image.error}", file=sys.stderr)
    summary = _summary(run_id, out_dir, entries, pipeline, open_timings, run_start,
                       source={"bundle": bundle, "checkpoint": checkpoint, "body_model": body_model},
                       options={"backend": backend, "precision": precision, "threads": threads, "coords": coords,
                                "overlay": overlay, "boxes_file": str(boxes_file) if boxes_file else None,
                                "min_score": min_score if boxes_file else None,
                                "boxes_file_unmatched_keys": len(unmatched)})
    names = [f"summary-{run_id}.json"] + [f"summary-{run_id}-{n}.json" for n in range(1, 100)]
    try:
        summary_path = write_new_file(out_dir, names, (json.dumps(summary, indent=2) + "\n").encode())
    except OSError as error:
        raise InputError(f"--out {out_dir}: writing the run's summary failed ({error.strerror or error}); "
                         f"{len(inputs) - len(failures)} image folders were written") from None
    print(f"bodyrt: wrote {summary_path} ({len(inputs) - len(failures)} of {len(inputs)} images)", file=sys.stderr)
    if failures:
        raise InputError(f"{len(failures)} of {len(inputs)} images failed (first: {failures[0]}); "
                         f"the others' results and the summary are written")
    return summary_path


def _run_image(pipeline, image, out_dir: Path, settings: dict) -> dict:
    """Run one image and swap its complete result folder in; -> its summary entry."""
    start = time.perf_counter()
    pixels = load_image(image.path)
    height, width = pixels.shape[:2]
    if image.boxes is not None:
        boxes, boxes_from = np.asarray(image.boxes, dtype=np.float32).reshape(-1, 4), "boxes file"
    elif settings["boxes"]:
        boxes, boxes_from = person_boxes_for(pixels, settings["boxes"]), "--box"
    else:
        boxes, boxes_from = person_boxes_for(pixels, None), "whole image"
    load_ms = _ms_since(start)
    result = pipeline(pixels, boxes) if len(boxes) else None
    write_start = time.perf_counter()
    final = out_dir / image.output_folder
    if os.path.lexists(final) and final.resolve() == Path(image.path).resolve():
        raise InputError(f"{image.path}: its results folder would be the image itself ({final}); "
                         "choose an --out outside the images' folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(final)
    staging = shared_temporary_folder(final.parent, f".{final.name}.partial-")
    try:
        record = _write_image_results(staging, pixels, boxes, result, pipeline, settings)
        record.update({"format": RESULT_FORMAT, "format_version": FORMAT_VERSION, "run_id": settings["run_id"],
                       "image": str(image.path), "width": width, "height": height, "boxes": boxes.tolist(),
                       "boxes_from": boxes_from})
        timings = {key: round(value, 3) for key, value in (result.timings_ms if result else {}).items()}
        record["timings_ms"] = {"load": load_ms, **timings}
        (staging / RESULT_NAME).write_text(json.dumps(record, indent=2) + "\n")
        digests = {name: _sha256(staging / name) for name in sorted(os.listdir(staging))}
        _swap_in(staging, final)
    except BaseException:
        remove_quietly(staging)
        raise
    record["timings_ms"]["write"] = _ms_since(write_start)
    record["timings_ms"]["total"] = _ms_since(start)
    folder = image.output_folder.as_posix()
    entry = {"image": str(image.path), "status": "ok", "output_folder": folder,
             "files": {f"{folder}/{name}": digest for name, digest in digests.items()}}
    entry.update({key: value for key, value in record.items() if key not in ("format", "format_version", "run_id",
                                                                                "image")})
    return entry


def _check_replaceable(final: Path) -> None:
    """An image's folder may be replaced only if bodyrt run wrote it (its result.json says so)."""
    if not os.path.lexists(final):
        return
    if final.is_symlink() or not final.is_dir() or not _is_result_folder(final):
        raise InputError(f"{final}: exists and was not written by bodyrt run; refusing to replace it "
                         "(move it away or choose another --out)")


def _is_result_folder(folder: Path) -> bool:
    if not any(folder.iterdir()):
        return True
    try:
        return json.loads((folder / RESULT_NAME).read_text()).get("format") == RESULT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _swap_in(staging: Path, final: Path) -> None:
    """Rename the complete staging folder to final, retiring the previous result folder first."""
    for _ in range(5):  # another run may swap its own folder in between
        retired = None
        if os.path.lexists(final):
            _check_replaceable(final)
            retired = final.parent / f"{staging.name.replace('.partial-', '.old-')}"
            try:
                os.rename(final, retired)
            except FileNotFoundError:
                retired = None
        try:
            os.rename(staging, final)
        except OSError:
            if retired is not None:
                remove_quietly(retired)
            continue
        if retired is not None:
            remove_quietly(retired)
        return
    raise InputError(f"{final}: could not be replaced (another run keeps writing it)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def person_results(values: dict, image_size, crop_size: int) -> dict:
    """One person's pipeline results -> the arrays of its params.npz.

    Kept as they are: vertices and joints (model space, camera orientation, no translation), the
    weak-perspective and crop pinhole cameras, part boxes, crop transform, any other result.
    Rotation matrices move to `<name>_rotmat`; their names take smplx's axis-angle arrays (batch of
    one, with `full_pose`, eye poses, betas, expression and `transl`); added: `camera_intrinsics`
    (3, 3) and `joints_2d` (J, 2) full-image pixels (joints + transl projected through them).
    """
    camera = full_image_camera(values["camera_scale"], values["camera_translation"], values["crop_transforms"],
                               float(np.asarray(values["focal_length"]).reshape(-1)[0]), image_size, crop_size)
    rotations = rotation_matrix_keys(values)
    arrays = {key: np.asarray(value) for key, value in values.items() if key not in rotations}
    arrays.update({f"{key}_rotmat": np.asarray(values[key]) for key in rotations})
    arrays.update(smplx_parameters({**values, "transl": camera["transl"]}))
    arrays["camera_intrinsics"] = camera["camera_intrinsics"].astype(np.float32)
    placed_joints = np.asarray(values["joints"], dtype=np.float64) + camera["transl"]
    arrays["joints_2d"] = project(placed_joints, camera["camera_intrinsics"]).astype(np.float32)
    return arrays


def _write_image_results(folder: Path, pixels, boxes, result, pipeline, settings: dict) -> dict:
    faces = settings["faces"]
    outputs = result.outputs if result is not None else {}
    count = len(outputs["vertices"]) if outputs else 0
    height, width = pixels.shape[:2]
    required = [f"{key}_rotmat" if key in rotation_matrix_keys(outputs) else key for key in settings["required"]]
    people, joints_2d = [], []
    for person in range(count):
        values = {key: value[person] for key, value in outputs.items()}
        arrays = person_results(values, (height, width), settings["crop_size"])
        placed = np.asarray(values["vertices"], dtype=np.float64) + arrays["transl"][0]
        mesh = to_coords(placed, settings["coords"]).astype(np.float32)
        stem = f"person{person}"
        write_params(folder / f"{stem}_params.npz", arrays, required=required)
        write_ply(folder / f"{stem}.ply", mesh, faces)
        write_obj(folder / f"{stem}.obj", mesh, faces)
        joints_2d.append(arrays["joints_2d"])
        entry = {"person": person, "box": boxes[person].tolist(), "transl": arrays["transl"][0].tolist(),
                 "files": [f"{stem}_params.npz", f"{stem}.ply", f"{stem}.obj"]}
        if "part_boxes" in values:  # body-only architectures (HKMR, deform-and-learn) have none
            entry["part_boxes"] = np.asarray(values["part_boxes"]).tolist()
        people.append(entry)
    record = {"people": people, "coords": settings["coords"], "overlay": None}
    if settings["overlay"]:
        from bodyrt.overlay import render_overlay

        picture = render_overlay(pixels, outputs, faces, crop_size=settings["crop_size"], person_boxes=boxes,
                                 joints_2d=joints_2d) if count else pixels
        save_png(folder / "overlay.png", picture)
        record["overlay"] = "overlay.png"
    return record


def _summary(run_id, out_dir, entries, pipeline, open_timings, run_start, source: dict, options: dict) -> dict:
    from bodyrt.roofline import cpu_description

    stage_totals = {}  # every image's steps added up: load, the pipeline's stages, write
    for entry in entries:
        for name, value in entry.get("timings_ms", {}).items():
            if name != "total":
                stage_totals[name] = round(stage_totals.get(name, 0.0) + value, 3)
    manifest = getattr(pipeline, "manifest", None) or {}
    bundle = None
    if source["bundle"]:
        manifest_path = Path(source["bundle"]) / "manifest.json"
        bundle = {"path": str(Path(source["bundle"]).resolve()), "arch": getattr(manifest, "arch", None),
                  "manifest_sha256": _sha256(manifest_path) if manifest_path.is_file() else None}
    ok = [entry for entry in entries if entry["status"] == "ok"]
    return {
        "format": SUMMARY_FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id,
        "bodyrt_version": __version__, "out": str(out_dir.resolve()),
        "bundle": bundle,
        "checkpoint": {"path": str(Path(source["checkpoint"]).resolve()),
                       "body_model": str(Path(source["body_model"]).resolve())} if source["checkpoint"] else None,
        **options,
        "stage_precisions": dict(getattr(pipeline, "stage_precisions", {}) or {}),
        "cpu": cpu_description(),
        "counts": {"images": len(entries), "ok": len(ok), "failed": len(entries) - len(ok),
                   "people": sum(len(entry["people"]) for entry in ok)},
        "timings_ms": {**open_timings, "stages": stage_totals,
                       "images": round(sum(entry.get("timings_ms", {}).get("total", 0.0) for entry in entries), 3),
                       "total": _ms_since(run_start)},
        "images": entries,
    }


def _promised_results(pipeline) -> tuple:
    """The result names a bundle's manifest promises (the ExPose set for the reference pipeline)."""
    from bodyrt.runtime.outputs import PARAM_KEYS

    manifest = getattr(pipeline, "manifest", None)
    return tuple(manifest.results) if manifest else PARAM_KEYS


def _body_crop_size(pipeline) -> int:
    """Side of the body crop the weak-perspective camera refers to, from the bundle's body_crop step
    (the reference pipeline: its own)."""
    manifest = getattr(pipeline, "manifest", None)
    return manifest.body_crop.crop_size if manifest else pipeline.crop_size
