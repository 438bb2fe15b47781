"""`bodyrt run`: images and person boxes in, per-person meshes and parameters out.

With --checkpoint it runs the PyTorch reference pipeline; with --bundle the torch-free runtime,
which also writes an OBJ mesh, an overlay PNG and a JSON summary with per-stage timings.
"""

import json
import logging
import sys
from pathlib import Path

import numpy as np

from bodyrt.errors import BodyrtError, InputError
from bodyrt.images import load_image, save_png
from bodyrt.progress import progress
from bodyrt.runtime.outputs import write_obj, write_params, write_ply

log = logging.getLogger("bodyrt")


def person_boxes_for(image: np.ndarray, boxes) -> np.ndarray:
    """--box values (or the whole image when none) as (N, 4) float32."""
    if not boxes:
        height, width = image.shape[:2]
        return np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _open_pipeline(bundle, checkpoint, body_model, threads, backend="onnxruntime", precision="fp32"):
    if bundle:
        from bodyrt.runtime import open_bundle

        # one Pipeline; a GPU backend runs it on the device executor (crop kernel, engines, one stream)
        return open_bundle(bundle, backend=backend, threads=threads, precision=precision)
    from bodyrt.export.reference import ReferencePipeline

    return ReferencePipeline(checkpoint, body_model, threads=threads)


def run_images(images, out_dir, boxes=None, bundle=None, checkpoint=None, body_model=None, threads=2,
               backend="onnxruntime", precision="fp32") -> int:
    """Run every image; write results under out_dir. Returns the number of images processed.

    An image that cannot be read or run is reported and skipped; if any failed, InputError is raised
    at the end (after the others ran) so the CLI exits non-zero.
    """
    pipeline = _open_pipeline(bundle, checkpoint, body_model, threads, backend, precision)
    if getattr(pipeline, "untrained", False):
        print("bodyrt: note: these weights are UNTRAINED (synthetic); meshes are not meaningful.",
              file=sys.stderr)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures, summary = [], []
    for image_path in progress(images, label="images"):
        try:
            image = load_image(image_path)
            result = pipeline(image, person_boxes_for(image, boxes))
        except BodyrtError as error:
            failures.append(f"{image_path}: {error}" if str(image_path) not in str(error) else str(error))
            print(f"bodyrt: skipped {failures[-1]}", file=sys.stderr)
            continue
        summary.append(_write_image_results(out_dir, Path(image_path), image, result, pipeline, bundle))
    if bundle:
        (out_dir / "summary.json").write_text(json.dumps({"images": summary}, indent=2))
    if failures:
        raise InputError(f"{len(failures)} of {len(images)} images failed (first: {failures[0]})")
    return len(summary)


def _write_image_results(out_dir, image_path, image, result, pipeline, bundle) -> dict:
    faces = pipeline.faces
    count = len(result.outputs["vertices"])
    people = []
    for person in range(count):
        values = {key: value[person] for key, value in result.outputs.items()}
        stem = f"{image_path.stem}_person{person}"
        write_params(out_dir / f"{stem}_params.npz", values, required=_promised_results(pipeline))
        write_ply(out_dir / f"{stem}.ply", values["vertices"], faces)
        if bundle:
            write_obj(out_dir / f"{stem}.obj", values["vertices"], faces)
        entry = {"person": person}
        if "part_boxes" in values:  # body-only architectures (HKMR, deform-and-learn) have none
            entry["part_boxes"] = values["part_boxes"].tolist()
        people.append(entry)
    if bundle:
        from bodyrt.overlay import render_overlay

        overlay = render_overlay(image, result.outputs, faces, crop_size=_body_crop_size(pipeline))
        save_png(out_dir / f"{image_path.stem}_overlay.png", overlay)
    return {"image": str(image_path), "people": people,
            "timings_ms": {key: round(value, 3) for key, value in result.timings_ms.items()},
            **getattr(result, "info", {})}


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
