"""`bodyrt export`: a checkpoint and a body model -> a bundle directory the runtime can run.

The bundle holds one ONNX graph per stage (body, hand, face, merge; see bodyrt.export.stages) with
a dynamic person axis, and manifest.json with everything the runtime needs. Every stage is checked
against PyTorch on real intermediate tensors before the bundle is written, and the directory is
swapped in atomically: a failed export leaves no half bundle and keeps the previous one. Where an
export may write, and the marker that says a folder is bodyrt's: bodyrt.export.out_folder.
"""

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bodyrt
from bodyrt.errors import ExportError
from bodyrt.files import apply_umask
from bodyrt.export import layout
from bodyrt.export.stages import MergeStage
from bodyrt.export.out_folder import check_out_dir, make_staging, remove_stale_staging, swap_in
from bodyrt.progress import progress
from bodyrt.limits import check_threads
from bodyrt.runtime.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, sha256_of
from bodyrt.runtime.manifest import parse_manifest

log = logging.getLogger("bodyrt")

OPSET = 18
# Largest |onnx - torch| accepted per stage output, in the output's units (pixels for boxes, metres
# for vertices, raw numbers for parameters); float32 reassociation stays well below these.
STAGE_TOLERANCES = {"body": 1e-3, "hand": 1e-4, "face": 1e-4, "merge": 1e-5}
BOX_TOLERANCE_PX = 1e-2


def stage_specs(pipeline) -> list[dict]:
    """The four ExPose stages: module, input and output names, and which inputs carry the person axis."""
    return [
        {"name": "body", "module": pipeline.body_stage,
         "inputs": ["body_crops", "crop_transforms"],
         "outputs": ["body_params", "part_boxes", "hand_starts", "face_starts"]},
        {"name": "hand", "module": pipeline.hand_stage,
         "inputs": ["hand_crops", "hand_starts"], "outputs": ["hand_params"]},
        {"name": "face", "module": pipeline.face_stage,
         "inputs": ["face_crops", "face_starts"], "outputs": ["face_params"]},
        {"name": "merge", "module": pipeline.merge_stage,
         "inputs": ["body_params", "hand_params", "face_params"],
         "outputs": list(MergeStage.OUTPUT_NAMES)},
    ]


PINHOLE_OUTPUTS = ["focal_length", "pinhole_translation"]


def pinhole_step(crop_size: int, name: str = "pinhole") -> dict:
    """The pinhole conversion of the body camera (the ExPose demo's focal length)."""
    return {"name": name, "op": "pinhole", "scale": "camera_scale", "translation": "camera_translation",
            "crop_transforms": "crop_transforms", "focal_length": layout.FOCAL_LENGTH_PX, "crop_size": crop_size,
            "focal_length_output": PINHOLE_OUTPUTS[0], "translation_output": PINHOLE_OUTPUTS[1]}


def body_crop_step(crop_size: int) -> dict:
    return {"name": "body_crop", "op": "body_crop", "boxes": "person_boxes", "crops": "body_crops",
            "transforms": "crop_transforms", "crop_size": crop_size, "box_scale": layout.BODY_BOX_SCALE}


def expose_steps() -> list[dict]:
    """The runtime's step list for ExPose: host crops between the stage graphs; names are unique."""
    return [
        body_crop_step(layout.BODY_CROP_SIZE),
        {"name": "body", "op": "graph", "stage": "body"},
        {"name": "hand_crops", "op": "part_crops", "boxes": "part_boxes", "parts": [0, 1],
         "mirror": [False, True], "crop_size": layout.HAND_CROP_SIZE, "output": "hand_crops"},
        {"name": "face_crops", "op": "part_crops", "boxes": "part_boxes", "parts": [2],
         "mirror": [False], "crop_size": layout.FACE_CROP_SIZE, "output": "face_crops"},
        {"name": "hand", "op": "graph", "stage": "hand"},
        {"name": "face", "op": "graph", "stage": "face"},
        {"name": "merge", "op": "graph", "stage": "merge"},
        pinhole_step(layout.BODY_CROP_SIZE),
    ]


RESULTS = [*MergeStage.OUTPUT_NAMES, "part_boxes", "crop_transforms", *PINHOLE_OUTPUTS]


def export_onnx(module, sample_inputs: tuple, path: Path, input_names, output_names,
                exporter: str = "dynamo") -> None:
    """Export one stage, the person axis (axis 0) dynamic.

    exporter "dynamo" (default) or "torchscript": the latter for graphs that are long unrolled
    loops of small ops (HKMR's 288 joint updates), which it exports in seconds instead of minutes.
    """
    people = torch.export.Dim("people", min=1, max=64)
    dynamic_shapes = tuple({0: people} for _ in sample_inputs)
    try:
        if exporter == "torchscript":
            torch.onnx.export(module, sample_inputs, str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={name: {0: "people"} for name in [*input_names, *output_names]})
            return
        # The exporter narrates every pass and warns about torchvision and axis names; the export's
        # own progress bar is what the user should see.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, sample_inputs, dynamo=True, opset_version=OPSET,
                                        input_names=list(input_names), output_names=list(output_names),
                                        dynamic_shapes=dynamic_shapes, optimize=True, verify=False,
                                        external_data=False, verbose=False)
        program.save(str(path))
    except Exception as error:  # the exporters raise many types; name the stage and keep the cause
        raise ExportError(f"exporting {path.name} failed: {type(error).__name__}: {error}") from error


def finish_graph(path: Path) -> dict:
    """Check and shape-infer a saved graph in place; return its input/output specs for the manifest."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.save(model, str(path))

    def spec(value):
        tensor_type = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def check_stage(path: Path, name: str, feeds: dict, expected: dict, threads: int,
                tolerance: float | None = None) -> float:
    """Run the exported graph in ONNX Runtime and compare with PyTorch; returns the worst deviation.

    tolerance: the largest deviation accepted for every output; default STAGE_TOLERANCES[name]."""
    from bodyrt.runtime.backends import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads).activate()
    got = runner.infer(feeds)
    worst = 0.0
    for output, reference in expected.items():
        allowed = tolerance if tolerance is not None else (
            BOX_TOLERANCE_PX if output == "part_boxes" else STAGE_TOLERANCES[name])
        deviation = float(np.max(np.abs(got[output] - reference))) if reference.size else 0.0
        if not deviation <= allowed:
            raise ExportError(f"stage {name}: output {output} differs from PyTorch by {deviation:.3g} "
                              f"(tolerance {allowed:g}); the export is not faithful")
        worst = max(worst, deviation)
    return worst


def manifest_for(pipeline, stage_files: dict, graph_specs: dict, checkpoint, body_model) -> dict:
    import onnx

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": "expose",
        # Stages that stay fp32 when bf16 or int8 is asked for: the SMPL-X merge costs ~4 mm of vertex
        # deviation in bf16 for under 1 ms saved (measured with the OpenVINO backend).
        "fp32_stages": ["merge"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": {"bodyrt": bodyrt.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "opset": OPSET},
        "source": {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": sha256_of(checkpoint),
                   "body_model": Path(body_model).name, "body_model_sha256": sha256_of(body_model),
                   "untrained": pipeline.untrained},
        "preprocessing": {"mean": list(layout.IMAGENET_MEAN), "std": list(layout.IMAGENET_STD),
                          "pixel_scale": layout.PIXEL_SCALE},
        "stages": [{"name": name, "file": stage_files[name], **graph_specs[name]} for name in stage_files],
        "steps": expose_steps(),
        "results": RESULTS,
        "mesh": {"model": "smplx", "num_vertices": int(pipeline.body_model_data.arrays["v_template"].shape[0]),
                 "faces": pipeline.faces.tolist()},
        "files": {},
    }


def sample_batch(pipeline, people: int = 2, seed: int = 0) -> dict:
    """Real intermediate tensors for `people` persons on a synthetic image, for export and checks."""
    rng = np.random.default_rng(seed)
    height, width = 480, 640
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = [[60 + 200 * i, 40, 60 + 200 * i + 180, 40 + 400] for i in range(people)]
    pipeline(image, np.asarray(boxes, dtype=np.float32))
    return pipeline.last_intermediates


def export_bundle(checkpoint, body_model, out_dir, threads: int = 2, arch: str = "expose") -> Path:
    """Export every stage, check it against PyTorch, write the manifest, and swap the bundle in.

    arch "expose" (default) is this module's pipeline; the body-only SMPL architectures ("hkmr",
    "deform-and-learn") are exported by bodyrt.export.smpl_bundle through the same build_bundle.
    """
    check_threads(threads)
    out_dir = check_out_dir(out_dir)  # a bad --out fails now, not after minutes of export
    remove_stale_staging(out_dir)  # what an export killed by SIGKILL left beside it
    if arch != "expose":
        from bodyrt.export.smpl_bundle import export_smpl_bundle

        return export_smpl_bundle(checkpoint, body_model, out_dir, arch=arch, threads=threads)
    from bodyrt.export.reference import ReferencePipeline

    pipeline = ReferencePipeline(checkpoint, body_model, threads=threads)
    # clone: the reference runs in inference mode, whose tensors cannot be traced for export
    samples = {key: value.clone() for key, value in sample_batch(pipeline).items()}
    return build_bundle(out_dir, stage_specs(pipeline), samples, threads,
                        lambda files, graphs: manifest_for(pipeline, files, graphs, checkpoint, body_model))


def build_bundle(out_dir, specs: list[dict], samples: dict, threads: int, make_manifest) -> Path:
    """Export and check each stage spec into a staging directory, write the manifest, swap it in.

    specs: stage_specs-like dicts (name, module, inputs, outputs, optional tolerance); samples: input
    name -> torch tensor; make_manifest(stage_files, graph_specs) -> the manifest dict.
    """
    out_dir = check_out_dir(out_dir)
    staging = make_staging(out_dir)
    try:
        stage_files, graph_specs = {}, {}
        for spec in progress(specs, label="export"):
            name = spec["name"]
            path = staging / f"{name}.onnx"
            inputs = tuple(samples[key] for key in spec["inputs"])
            with torch.no_grad():
                expected = spec["module"](*inputs)
            expected = expected if isinstance(expected, tuple) else (expected,)
            exporter = {"exporter": spec["exporter"]} if "exporter" in spec else {}
            export_onnx(spec["module"], inputs, path, spec["inputs"], spec["outputs"], **exporter)
            graph_specs[name] = finish_graph(path)
            feeds = {key: samples[key].numpy() for key in spec["inputs"]}
            expected = {key: value.numpy() for key, value in zip(spec["outputs"], expected)}
            extra = {"tolerance": spec["tolerance"]} if "tolerance" in spec else {}
            worst = check_stage(path, name, feeds, expected, threads, **extra)
            log.info("stage %s exported, max deviation from PyTorch %.3g", name, worst)
            stage_files[name] = path.name
        manifest = make_manifest(stage_files, graph_specs)
        manifest["files"] = {file: sha256_of(staging / file) for file in stage_files.values()}
        manifest = parse_manifest(manifest, "exported manifest")  # export writes only what the runtime reads
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest.to_json()))
        apply_umask(staging)  # mkdtemp made it 0700: a bundle is shared like any folder (0755 under umask 022)
        swap_in(staging, out_dir)
    except OSError as error:  # a full disk, a folder made read-only meanwhile: one line naming the file
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"{error.filename or out_dir}: cannot write the bundle "
                          f"({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
