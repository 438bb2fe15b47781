"""`bodyrt check`: each stage of a bundle on every backend and precision available here, against
ONNX Runtime fp32, compared by Polygraphy's comparator.

    report = check_bundle("bundle/")                  # synthetic scenes, every candidate found
    print(format_report(report)); report["passed"]

The stage inputs are real: the bundle runs on ONNX Runtime fp32 over the scenes (the user's images,
or synthetic 720p ones), and every stage's inputs are taken from those runs, so the hand and face
stages see the crops their body stage leads to. Each candidate (a backend at a precision: OpenVINO
fp32, bf16 and int8, ONNX Runtime int8, and on a GPU TensorRT and ONNX Runtime CUDA at the bundle's
GPU precision) then runs each stage on the same feeds through Polygraphy's Comparator, which coerces
the inputs to each runner's types (float16 crops for fp16 GPU graphs), and CompareFunc.simple
judges each output against its tolerance (atol, rtol per precision; an element passes when within
either). Where an output diverges, the report names the stage, the output, the largest error, and
where it is (person and element). A candidate this machine cannot run (no bf16 CPU, no int8
variant, no GPU) is listed as skipped with the reason.
"""

import time

import numpy as np

from bodyrt.errors import BackendUnavailableError, BodyrtError, BundleError, InputError

BASELINE = ("onnxruntime", "fp32")
# (backend, precision) in the order they are tried; GPU backends run at the bundle's GPU precision.
CANDIDATES = (("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
              ("tensorrt", "gpu"), ("cuda", "gpu"))
# Tolerances per precision, (atol, rtol). fp32 across libraries differs by summation order only; bf16
# keeps 8 bits of mantissa, int8 and fp16 backbones move the regressed parameters by a few 1e-2.
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 2e-2), "bf16": (2.5e-1, 5e-2), "int8": (2.5e-1, 5e-2)}


def import_polygraphy():
    """(Comparator, CompareFunc, BaseRunner, TensorMetadata), or BackendUnavailableError naming the extra."""
    try:
        from polygraphy.backend.base import BaseRunner
        from polygraphy.common import TensorMetadata
        from polygraphy.comparator import Comparator, CompareFunc
        from polygraphy.logger import G_LOGGER
    except ImportError as error:
        raise BackendUnavailableError(f"bodyrt check needs Polygraphy ({error}); pip install \"bodyrt[check]\" "
                                      "(from a checkout: pip install \".[check]\")") from None
    G_LOGGER.module_severity = G_LOGGER.ERROR  # bodyrt prints its own report; Polygraphy's progress is noise
    return Comparator, CompareFunc, BaseRunner, TensorMetadata


def polygraphy_runner(runner, name: str, input_specs: list):
    """A bodyrt runner (activate / infer / deactivate) as a Polygraphy runner named `name`.

    input_specs: the graph's inputs (manifest TensorSpecs); Polygraphy coerces each feed to them.
    """
    _, _, BaseRunner, TensorMetadata = import_polygraphy()

    class BodyrtRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="bodyrt")
            self.runner = runner

        def activate_impl(self):
            self.runner.activate()

        def get_input_metadata_impl(self):
            metadata = TensorMetadata()
            for spec in input_specs:
                shape = [dim if isinstance(dim, int) else -1 for dim in spec.shape]
                metadata.add(spec.name, np.dtype(spec.dtype), shape)
            return metadata

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            outputs = {key: np.asarray(value) for key, value in self.runner.infer(dict(feed_dict)).items()}
            self.inference_time = time.perf_counter() - start
            return outputs

        def deactivate_impl(self):
            self.runner.deactivate()

    return BodyrtRunner()


def stage_feeds(bundle_path, scenes, threads: int = 2) -> dict:
    """stage name -> [feed dict per scene]: the stage inputs of ONNX Runtime fp32 runs over `scenes`."""
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle_path, threads=threads)
    feeds = {stage.name: [] for stage in pipeline.manifest.stages}
    try:
        for image, boxes in scenes:
            pipeline(image, boxes)
            for stage in pipeline.manifest.stages:
                feeds[stage.name].append({spec.name: np.array(pipeline.last_tensors[spec.name])
                                          for spec in stage.inputs})
    finally:
        pipeline.close()
    return feeds


def stage_runner(bundle, stage, backend: str, precision: str, threads: int):
    """(bodyrt runner, input TensorSpecs, precision it runs at) for one stage on one candidate.

    Raises BackendUnavailableError / BundleError when this machine or bundle cannot run it.
    """
    from bodyrt.runtime.backends import backend as backend_entry
    from bodyrt.runtime.backends import make_runner, stage_plan

    if backend_entry(backend).runs_on == "device":  # the bundle's GPU graph, at its own precision
        graph = bundle.manifest.gpu_graph(stage.name)
        return make_runner(backend, bundle, stage.name, threads), graph.inputs, graph.precision
    planned = stage_plan(bundle, precision)[stage.name]
    return make_runner(backend, bundle, stage.name, threads, precision), stage.inputs, planned["precision"]


def divergence(expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict:
    """Where `got` is furthest outside the tolerance: index, both values, and how many elements fail."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    error = np.abs(got - expected)
    relative = error / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    failing = (error > atol) & (relative > rtol)
    excess = np.where(failing, error - atol, -np.inf)
    index = np.unravel_index(int(np.argmax(excess)), error.shape) if failing.any() else None
    return {"failing": int(failing.sum()), "size": int(error.size),
            "index": [int(i) for i in index] if index is not None else None,
            "expected": float(expected[index]) if index is not None else None,
            "got": float(got[index]) if index is not None else None}


def simple_compare(CompareFunc, atol: float, rtol: float):
    """Polygraphy's simple comparison (SimpleCompareFunc from 0.53, CompareFunc.simple before)."""
    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:
        return CompareFunc.simple(atol=atol, rtol=rtol)
    return SimpleCompareFunc(atol=atol, rtol=rtol)


def candidate_unavailable(bundle, backend: str, precision: str):
    """Why this machine or bundle cannot run the candidate at all (a sentence), or None; cheap checks only."""
    from bodyrt.runtime.backends import backend as backend_entry

    manifest = bundle.manifest
    if precision == "int8" and manifest.variants.int8 is None:
        return f"the bundle has no int8 variant (bodyrt quantize --bundle {bundle.path} --calibration IMAGES)"
    if backend == "tensorrt" and (manifest.gpu is None or manifest.gpu.tensorrt is None):
        return (f"the bundle has no TensorRT engines (build them on the GPU machine: "
                f"python -m bodyrt.export.tensorrt --bundle {bundle.path})")
    try:
        reason = backend_entry(backend).unavailable()
        if reason is None and backend == "openvino":
            from bodyrt.runtime.openvino_backend import check_precision, import_openvino

            check_precision(import_openvino().Core(), precision)
    except (BackendUnavailableError, InputError) as error:
        return str(error)
    return reason


def baseline_results(bundle, stage: dict, feeds: list, threads: int):
    """(runner name, Polygraphy iteration results) of ONNX Runtime fp32 on the stage's feeds."""
    Comparator, _, _, _ = import_polygraphy()
    runner, input_specs, _ = stage_runner(bundle, stage, *BASELINE, threads)
    name = " ".join(BASELINE)
    return name, Comparator.run([polygraphy_runner(runner, name, input_specs)], data_loader=feeds)[name]


def compare_stage(bundle, stage: dict, feeds: list, baseline, candidate, threads: int, tolerances: dict) -> dict:
    """One stage on one candidate against the baseline's results, through Polygraphy's Comparator."""
    Comparator, CompareFunc, _, _ = import_polygraphy()
    from polygraphy.comparator import RunResults

    backend, precision = candidate
    try:
        runner, input_specs, ran_at = stage_runner(bundle, stage, backend, precision, threads)
        name = f"{backend} {ran_at}"
        results = Comparator.run([polygraphy_runner(runner, name, input_specs)], data_loader=feeds)
    except (BackendUnavailableError, BundleError) as error:
        return {"stage": stage.name, "skipped": str(error)}
    both = RunResults()
    both.append(baseline)
    both.append((name, results[name]))
    atol, rtol = tolerances.get(ran_at, tolerances["fp32"])
    accuracy = Comparator.compare_accuracy(both, compare_func=simple_compare(CompareFunc, atol, rtol))
    if not hasattr(accuracy, "keys"):  # Polygraphy 0.53: one AccuracyResult per compare function
        accuracy = accuracy[0]
    outputs = {}
    for iteration, compared in enumerate(accuracy[(baseline[0], name)]):
        expected, got = baseline[1][iteration], results[name][iteration]
        for output, result in compared.items():
            entry = outputs.setdefault(output, {"passed": True, "max_absdiff": 0.0, "max_reldiff": 0.0})
            entry["max_absdiff"] = max(entry["max_absdiff"], float(result.max_absdiff))
            entry["max_reldiff"] = max(entry["max_reldiff"], float(result.max_reldiff))
            if not bool(result):
                entry["passed"] = False
                entry.setdefault("where", {"scene": iteration, **divergence(expected[output], got[output], atol,
                                                                             rtol)})
    return {"stage": stage.name, "precision": ran_at, "atol": atol, "rtol": rtol, "outputs": outputs,
            "passed": all(entry["passed"] for entry in outputs.values())}


def check_bundle(bundle_path, scenes=None, candidates=None, threads: int = 2, tolerances=None) -> dict:
    """Every stage of the bundle on each candidate (backend, precision) against ONNX Runtime fp32.

    scenes: [(image (H, W, 3) uint8, boxes (N, 4))], default three synthetic 720p scenes.
    candidates: default CANDIDATES; precision "gpu" is the bundle's GPU precision. tolerances:
    precision -> (atol, rtol) over TOLERANCES. Returns {"candidates": [{"backend", "precision",
    "stages": [...], "passed" | "skipped"}], "passed": all compared stages passed, "compared": count}.
    """
    from bodyrt.compare import synthetic_scenes
    from bodyrt.runtime.bundle import read_bundle

    import_polygraphy()
    bundle = read_bundle(bundle_path)
    scenes = scenes if scenes is not None else synthetic_scenes(3)
    tolerances = {**TOLERANCES, **(tolerances or {})}
    candidates = list(candidates) if candidates is not None else list(CANDIDATES)
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise InputError(f"unknown candidates {unknown}; known: {', '.join(f'{b} {p}' for b, p in CANDIDATES)}")
    feeds = stage_feeds(bundle.path, scenes, threads)
    report = {"bundle": str(bundle.path), "baseline": " ".join(BASELINE), "scenes": len(scenes), "candidates": []}
    baselines = {}
    for backend, precision in candidates:
        entry = {"backend": backend, "precision": precision, "stages": []}
        report["candidates"].append(entry)
        reason = candidate_unavailable(bundle, backend, precision)
        if reason is not None:
            entry["skipped"] = reason
            continue
        for stage in bundle.manifest.stages:
            if stage.name not in baselines:
                baselines[stage.name] = baseline_results(bundle, stage, feeds[stage.name], threads)
            entry["stages"].append(compare_stage(bundle, stage, feeds[stage.name], baselines[stage.name],
                                                 (backend, precision), threads, tolerances))
        stages = entry["stages"]
        compared = [stage for stage in stages if "skipped" not in stage]
        if compared:
            entry["passed"] = all(stage["passed"] for stage in compared)
        else:
            entry["skipped"] = stages[0]["skipped"] if stages else "the bundle has no stages"
    compared = [entry for entry in report["candidates"] if "passed" in entry]
    report["compared"] = len(compared)
    report["passed"] = all(entry["passed"] for entry in compared)
    return report


def format_report(report: dict) -> str:
    """The report as lines of text: one per candidate and stage, and one per diverging output."""
    lines = [f"bundle {report['bundle']}: every stage against {report['baseline']} on {report['scenes']} scenes"]
    for entry in report["candidates"]:
        label = f"{entry['backend']} {entry['precision']}"
        if "skipped" in entry:
            lines.append(f"  {label:18} skipped: {entry['skipped']}")
            continue
        for stage in entry["stages"]:
            if "skipped" in stage:
                lines.append(f"  {label:18} {stage['stage']:8} skipped: {stage['skipped']}")
                continue
            worst = max(stage["outputs"].values(), key=lambda output: output["max_absdiff"])
            verdict = "ok" if stage["passed"] else "DIVERGES"
            lines.append(f"  {label:18} {stage['stage']:8} {verdict:8} ran at {stage['precision']}, max |diff| "
                         f"{worst['max_absdiff']:.3g} (atol {stage['atol']:g}, rtol {stage['rtol']:g})")
            for name, output in stage["outputs"].items():
                if output["passed"]:
                    continue
                where = output["where"]
                lines.append(f"      {name}: {where['failing']} of {where['size']} elements outside the tolerance "
                             f"in scene {where['scene']}; worst at index {tuple(where['index'])}: "
                             f"expected {where['expected']:.6g}, got {where['got']:.6g}")
    verdict = "all compared stages agree" if report["passed"] else "some stages diverge"
    lines.append(f"{verdict} ({report['compared']} candidates compared)")
    return "\n".join(lines)


class DivergenceError(BodyrtError):
    """A stage's outputs on some backend or precision are outside the tolerance (bodyrt check)."""


def parse_candidates(texts):
    """["openvino:bf16", ...] -> [("openvino", "bf16"), ...]; InputError for one that is not in CANDIDATES."""
    if not texts:
        return None
    known = {f"{backend}:{precision}": (backend, precision) for backend, precision in CANDIDATES}
    unknown = [text for text in texts if text not in known]
    if unknown:
        raise InputError(f"--candidate {', '.join(unknown)} is not one of {', '.join(known)}")
    return [known[text] for text in texts]


def run_check(bundle_path, images=(), boxes=None, threads: int = 2, atol=None, rtol=None, json_path=None,
              candidates=None) -> dict:
    """The CLI's `bodyrt check`: prints the report and writes it as JSON if asked; returns it when every
    compared stage agrees, else raises DivergenceError (the CLI exits 1)."""
    import json

    from bodyrt.compare import scenes_from_images

    candidates = parse_candidates(candidates)
    scenes = scenes_from_images(images, boxes) if images else None
    tolerances = None
    if atol is not None or rtol is not None:
        if (atol is not None and not atol >= 0) or (rtol is not None and not rtol >= 0):
            raise InputError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
        tolerances = {precision: (atol if atol is not None else pair[0], rtol if rtol is not None else pair[1])
                      for precision, pair in TOLERANCES.items()}
    report = check_bundle(bundle_path, scenes=scenes, candidates=candidates, threads=threads,
                          tolerances=tolerances)
    print(format_report(report))
    if json_path:
        try:
            with open(json_path, "w") as stream:
                json.dump(report, stream, indent=1)
        except OSError as error:
            raise BodyrtError(f"{json_path}: cannot write the report ({error.strerror})") from None
    if report["compared"] == 0:
        raise BackendUnavailableError("none of the candidates runs on this machine with this bundle (see the reasons "
                                      "above): nothing was compared")
    if not report["passed"]:
        diverging = [f"{entry['backend']} {entry['precision']} {stage['stage']}" for entry in report["candidates"]
                     for stage in entry["stages"] if stage.get("passed") is False]
        raise DivergenceError(f"outputs diverge from {report['baseline']} in: {', '.join(diverging)}")
    return report
