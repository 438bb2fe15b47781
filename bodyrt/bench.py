"""`bodyrt bench`: honest latency of the runtime backends, side by side with the PyTorch reference.

What is timed: one call from a decoded image in memory ((H, W, 3) uint8) and its person boxes to
the final vertices and every other output (crops, all stage graphs, the camera conversion). What is
not: image decoding, writing files, opening sessions, warm-up. Candidates run interleaved
(A, B, A, B, ...) so that drift of a shared machine hits all of them alike, and the speed-up against
the reference is taken pair by pair.
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bodyrt.errors import InputError
from bodyrt.progress import progress

IMAGE_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


def bench_image(size: str = "720p", persons: int = 1, seed: int = 0):
    """A synthetic (H, W, 3) uint8 image and `persons` boxes side by side, each most of the height."""
    if size not in IMAGE_SIZES:
        raise InputError(f"--image-size must be one of {', '.join(IMAGE_SIZES)}, got {size!r}")
    if persons < 1:
        raise InputError(f"--persons must be at least 1, got {persons}")
    height, width = IMAGE_SIZES[size]
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    slot = width / persons
    boxes = [[slot * i + 0.1 * slot, 0.05 * height, slot * i + 0.9 * slot, 0.95 * height] for i in range(persons)]
    return image, np.asarray(boxes, dtype=np.float32)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def candidate_name(backend: str, precision: str) -> str:
    """"openvino" for fp32, "openvino-bf16" otherwise."""
    return backend if precision == "fp32" else f"{backend}-{precision}"


def open_reference(bundle, reference_files, threads: int):
    """The PyTorch reference of the bundle's architecture (ExPose without a bundle)."""
    from bodyrt.runtime.bundle import read_bundle

    arch = read_bundle(bundle).manifest.arch if bundle else "expose"
    if arch == "expose":
        from bodyrt.export.reference import ReferencePipeline

        return ReferencePipeline(*reference_files, threads=threads)
    from bodyrt.export.smpl_bundle import SmplRegressorPipeline

    return SmplRegressorPipeline(*reference_files, arch=arch, threads=threads)


def open_candidates(bundle, backends, reference_files, threads: int, precisions=("fp32",)) -> dict:
    """name -> callable(image, boxes) returning a result with .timings_ms.

    Every backend runs every precision it supports; a lower precision a backend, CPU or bundle lacks
    (bf16 on onnxruntime, int8 without a quantized variant) is skipped with a note on stderr.
    """
    from bodyrt.errors import BodyrtError
    from bodyrt.runtime import open_bundle

    candidates = {}
    if reference_files:
        candidates["pytorch"] = open_reference(bundle, reference_files, threads)
    for backend in backends:
        for precision in precisions:
            try:
                candidates[candidate_name(backend, precision)] = open_bundle(
                    bundle, backend=backend, threads=threads, precision=precision)
            except BodyrtError as error:
                if precision == "fp32":
                    raise
                print(f"bodyrt bench: skipping {backend} {precision}: {error}", file=sys.stderr)
    if not candidates:
        raise InputError("nothing to benchmark: no backend runs the precisions asked for")
    return candidates


def vertex_deviations(candidates: dict, image, boxes) -> dict:
    """name -> {max_mm, mean_mm, against}: each lower-precision candidate's vertices against the same
    backend at fp32 (else the PyTorch reference), on the bench image."""
    from bodyrt.compare import distances_mm

    vertices = {name: candidate(image, boxes).outputs["vertices"] for name, candidate in candidates.items()}
    deviations = {}
    for name, candidate in candidates.items():
        if getattr(candidate, "precision", "fp32") == "fp32":
            continue
        baseline = candidate.backend if candidate.backend in candidates else "pytorch"
        if baseline not in vertices:
            continue
        distances = distances_mm(vertices[name], vertices[baseline])
        deviations[name] = {"max_mm": float(distances.max()), "mean_mm": float(distances.mean()),
                            "against": baseline}
    return deviations


def interleaved_runs(candidates: dict, image, boxes, repeats: int, warmup: int) -> dict:
    """Warm up each candidate, then time them in turn, `repeats` rounds; name -> list of samples."""
    for candidate in candidates.values():
        for _ in range(warmup):
            candidate(image, boxes)
    samples = {name: [] for name in candidates}
    for _ in progress(range(repeats), label="bench"):
        for name, candidate in candidates.items():
            start = time.perf_counter()
            result = candidate(image, boxes)
            total = (time.perf_counter() - start) * 1000.0
            samples[name].append({"total": total, **result.timings_ms})
    return samples


def summarise(samples: dict, persons: int, reference: str | None) -> dict:
    """Per candidate: median, p90, min (ms), throughput (persons/s), per-stage medians, and speed-ups."""
    summary = {}
    for name, runs in samples.items():
        totals = [run["total"] for run in runs]
        stages = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "total"}
        entry = {"median_ms": statistics.median(totals), "p90_ms": percentile(totals, 90),
                 "min_ms": min(totals), "throughput_persons_per_s": persons * 1000.0 / statistics.median(totals),
                 "stages_ms": stages}
        if reference and name != reference:
            ratios = [ref["total"] / ours["total"] for ref, ours in zip(samples[reference], runs)]
            entry["speedup_vs_reference"] = {"median": statistics.median(ratios), "min": min(ratios),
                                             "max": max(ratios)}
        summary[name] = entry
    return summary


def peak_rss_mb(candidate: str, bundle, reference_files, threads: int, image_size: str, persons: int) -> float:
    """Peak resident memory of a fresh process that opens one candidate and runs it twice, in MiB."""
    spec = json.dumps({"candidate": candidate, "bundle": str(bundle) if bundle else None,
                       "reference": [str(p) for p in reference_files] if reference_files else None,
                       "threads": threads, "image_size": image_size, "persons": persons})
    done = subprocess.run([sys.executable, "-c", f"from bodyrt.bench import _rss_probe; _rss_probe({spec!r})"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return float("nan")
    return float(done.stdout.strip().splitlines()[-1])


def _rss_probe(spec_json: str) -> None:
    spec = json.loads(spec_json)
    backend, precision = spec["candidate"], "fp32"
    for lower in ("bf16", "int8"):
        if backend.endswith(f"-{lower}"):
            backend, precision = backend[: -len(lower) - 1], lower
    backends = [] if spec["candidate"] == "pytorch" else [backend]
    reference = spec["reference"] if spec["candidate"] == "pytorch" else None
    candidate = next(iter(open_candidates(spec["bundle"], backends, reference, spec["threads"],
                                          precisions=[precision]).values()))
    image, boxes = bench_image(spec["image_size"], spec["persons"])
    candidate(image, boxes)
    candidate(image, boxes)
    print(peak_rss_of_this_process_mb())


def peak_rss_of_this_process_mb() -> float:
    """VmHWM on Linux. Not ru_maxrss: Linux carries it over exec from the forked parent, so a probe
    started by a process holding 3 GB reports 3 GB whatever it uses itself."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage_precisions(candidate) -> dict:
    """stage -> precision that actually ran (the PyTorch reference: fp32 everywhere)."""
    return dict(getattr(candidate, "stage_precisions", None) or {})


def add_roofline(summary: dict, candidates: dict, operations: dict, peaks: dict) -> None:
    """Per candidate and stage graph: achieved GOP/s and its fraction of the peak of the precision that ran."""
    for name, entry in summary.items():
        precisions = stage_precisions(candidates[name])
        roofline = {}
        for stage, cost in operations.items():
            milliseconds = entry["stages_ms"].get(stage)
            if not milliseconds:
                continue
            precision = precisions.get(stage, "fp32")
            achieved = cost["gop"] / (milliseconds / 1000.0)
            peak = peaks.get(precision, {}).get("gops")
            roofline[stage] = {"precision": precision, "gops": achieved,
                               "fraction_of_peak": achieved / peak if peak else None}
        entry["roofline"] = roofline


def busy_core_process(core: int) -> subprocess.Popen:
    """A process that spins on one core until killed: the competing load of `--contention`."""
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def contended_runs(candidates: dict, image, boxes, repeats: int, warmup: int, core: int = 0) -> dict:
    """interleaved_runs while another process keeps one core busy."""
    competitor = busy_core_process(core)
    try:
        return interleaved_runs(candidates, image, boxes, repeats, warmup)
    finally:
        competitor.kill()
        competitor.wait()


def run_bench(bundle=None, backends=("onnxruntime",), reference_files=None, persons: int = 1, precisions=("fp32",),
              image_size: str = "720p", threads: int = 2, repeats: int = 20, warmup: int = 3,
              memory: bool = True, json_path=None, roofline: bool = True, contention: bool = False) -> dict:
    """Benchmark and print a table; returns the report (also written to json_path when given).

    roofline: count each stage graph's operations, measure the CPU's peak per precision, and report
    each stage's achieved GOP/s and fraction of peak. contention: run everything again while another
    process keeps one core busy, and report each candidate's slowdown.
    """
    from bodyrt import roofline as rooflines

    if not bundle and not reference_files:
        raise InputError("give --bundle, or --reference with --checkpoint and --body-model")
    if repeats < 1 or warmup < 0:
        raise InputError(f"--repeats must be at least 1 and --warmup at least 0, got {repeats} and {warmup}")
    backends = list(backends) if bundle else []
    image, boxes = bench_image(image_size, persons)
    cpu = rooflines.cpu_description()
    candidates = open_candidates(bundle, backends, reference_files, threads, precisions)
    samples = interleaved_runs(candidates, image, boxes, repeats, warmup)
    reference = "pytorch" if reference_files else None
    summary = summarise(samples, persons, reference)
    for name, deviation in vertex_deviations(candidates, image, boxes).items():
        summary[name]["vertex_deviation_mm"] = deviation
    report = {"what_is_timed": "decoded uint8 image in memory + person boxes -> final vertices and all outputs",
              "cpu": cpu, "image_size": image_size, "persons": persons, "threads": threads, "repeats": repeats,
              "warmup": warmup}
    if roofline and bundle:
        from bodyrt.runtime.bundle import read_bundle

        report["stage_operations"] = rooflines.bundle_operations(read_bundle(bundle), people=persons)
        report["peaks"] = rooflines.measure_peaks(threads)
        report["peak_derivation"] = rooflines.PEAK_DERIVATION
        add_roofline(summary, candidates, report["stage_operations"], report["peaks"])
    if contention:
        contended = summarise(contended_runs(candidates, image, boxes, repeats, warmup), persons, reference)
        for name, entry in contended.items():
            summary[name]["contention"] = {"median_ms": entry["median_ms"],
                                           "slowdown": entry["median_ms"] / summary[name]["median_ms"]}
    if memory:
        for name in candidates:
            summary[name]["peak_rss_mb"] = peak_rss_mb(name, bundle, reference_files, threads, image_size, persons)
    report.update(summary=summary, samples=samples)
    print_report(report)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict) -> None:
    from bodyrt.roofline import describe_cpu

    summary = report["summary"]
    print(f"\nCPU: {describe_cpu(report['cpu'])}")
    if "peaks" in report:
        peaks = ", ".join(f"{precision} {peak['gops']:.0f} GOP/s ({peak['kernel']})" if "gops" in peak
                          else f"{precision} unavailable ({peak['unavailable']})"
                          for precision, peak in report["peaks"].items())
        print(f"peaks: {peaks}\n  measured as: {report['peak_derivation']}")
    print(f"{report['persons']} person(s), {report['image_size']}, {report['threads']} threads, "
          f"{report['repeats']} interleaved runs after {report['warmup']} warm-up; "
          f"timed: {report['what_is_timed']}")
    print(f"{'candidate':<17}{'median':>9}{'p90':>9}{'min':>9}{'persons/s':>11}{'peak MiB':>10}{'speed-up':>22}")
    for name, entry in summary.items():
        speedup = entry.get("speedup_vs_reference")
        ratio = (f"{speedup['median']:.2f}x ({speedup['min']:.2f}-{speedup['max']:.2f})" if speedup else "")
        print(f"{name:<17}{entry['median_ms']:>9.1f}{entry['p90_ms']:>9.1f}{entry['min_ms']:>9.1f}"
              f"{entry['throughput_persons_per_s']:>11.2f}{entry.get('peak_rss_mb', float('nan')):>10.0f}{ratio:>22}")
    deviations = {name: entry["vertex_deviation_mm"] for name, entry in summary.items()
                  if "vertex_deviation_mm" in entry}
    if deviations:
        print("\nvertex deviation on the bench image, mm (see `bodyrt compare` for a set of images; "
              "re-measure on your checkpoint)")
        for name, deviation in deviations.items():
            print(f"{name:<17} max {deviation['max_mm']:7.2f}  mean {deviation['mean_mm']:7.2f}  "
                  f"against {deviation['against']}")
    stages = list(dict.fromkeys(stage for entry in summary.values() for stage in entry["stages_ms"]))
    print("\nmedian per stage, ms")
    print(f"{'stage':<14}" + "".join(f"{name:>17}" for name in summary))
    for stage in stages:
        print(f"{stage:<14}" + "".join(f"{entry['stages_ms'].get(stage, float('nan')):>17.1f}"
                                       for entry in summary.values()))
    if "stage_operations" in report:
        print("\nachieved GOP/s per stage graph (fraction of the peak of the precision that ran)")
        print(f"{'stage':<8}{'GOP':>7}" + "".join(f"{name:>20}" for name in summary))
        for stage, cost in report["stage_operations"].items():
            cells = []
            for entry in summary.values():
                cell = entry.get("roofline", {}).get(stage)
                fraction = cell and cell["fraction_of_peak"]
                cells.append(f"{cell['gops']:.0f} {cell['precision']} ({fraction:.0%})" if fraction is not None
                             else f"{cell['gops']:.0f} {cell['precision']}" if cell else "")
            print(f"{stage:<8}{cost['gop']:>7.2f}" + "".join(f"{cell:>20}" for cell in cells))
    contended = {name: entry["contention"] for name, entry in summary.items() if "contention" in entry}
    if contended:
        print("\nunder contention (another process busy on one core): median ms, slowdown against quiet")
        for name, entry in contended.items():
            print(f"{name:<17}{entry['median_ms']:>9.1f}{entry['slowdown']:>8.2f}x")
