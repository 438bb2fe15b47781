"""The GPU smoke run, for a person with an NVIDIA GPU (see gpu_smoke.sh, which runs this once).

    python benchmarks/gpu_smoke.py --bundle BUNDLE --out gpu-smoke.json

No machine of the project has a GPU, so this is where the GPU paths meet one. Each check prints
one line and goes into the JSON report; the exit code is 1 if any check failed:
  sequence   2 -> 3 -> 2 persons with and without CUDA graphs: the outputs agree (a graph replayed
             after the person count changed must not return stale results)
  thread     the pipeline opened on the main thread and called from a worker thread
  zero       a frame with nobody in it returns empty outputs
  latency    end-to-end latency at batch 1, 2, 4 and 8 persons (median of --repeats runs), 720p
Nothing here is asserted about speed; the numbers are recorded.
"""

import argparse
import json
import statistics
import sys
import threading
import time

import numpy as np

METRES = 1e-3  # fp16 engines: graphs and no graphs run the same engines, so they agree far closer than this


def people_scene(count: int, seed: int = 0):
    from bodyrt.bench import bench_image

    return bench_image("720p", count, seed=seed)


def max_difference(first: dict, second: dict) -> float:
    return max(float(np.abs(np.asarray(first[key], np.float64) - np.asarray(second[key], np.float64)).max(initial=0))
               for key in ("vertices", "joints"))


def check_sequence(bundle: str, backend: str) -> dict:
    from bodyrt.runtime import open_bundle

    counts = [2, 3, 2, 3, 1, 2]
    plain = open_bundle(bundle, backend=backend)
    graphs = open_bundle(bundle, backend=backend, cuda_graphs=True)
    worst = 0.0
    try:
        for index, count in enumerate(counts):
            image, boxes = people_scene(count, seed=index)
            worst = max(worst, max_difference(plain(image, boxes).outputs, graphs(image, boxes).outputs))
    finally:
        plain.close()
        graphs.close()
    return {"counts": counts, "max_difference_m": worst, "passed": worst <= METRES}


def check_thread(bundle: str, backend: str) -> dict:
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle, backend=backend)
    image, boxes = people_scene(2)
    try:
        expected = pipeline(image, boxes).outputs
        found, failure = {}, []

        def work():
            try:
                found.update(pipeline(image, boxes).outputs)
            except Exception as error:  # reported, not raised: the point is to see it
                failure.append(f"{type(error).__name__}: {error}")

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        pipeline.close()
    if failure:
        return {"passed": False, "error": failure[0]}
    difference = max_difference(expected, found)
    return {"max_difference_m": difference, "passed": difference <= 1e-6}


def check_zero_people(bundle: str, backend: str) -> dict:
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle, backend=backend)
    image, _ = people_scene(1)
    try:
        outputs = pipeline(image, np.zeros((0, 4), np.float32)).outputs
    except Exception as error:
        return {"passed": False, "error": f"{type(error).__name__}: {error}"}
    finally:
        pipeline.close()
    return {"passed": all(len(value) == 0 for value in outputs.values())}


def measure_latency(bundle: str, backend: str, repeats: int) -> dict:
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle, backend=backend)
    latency = {}
    try:
        for count in (1, 2, 4, 8):
            image, boxes = people_scene(count)
            pipeline(image, boxes)  # warm-up
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                pipeline(image, boxes)
                runs.append((time.perf_counter() - start) * 1000.0)
            latency[str(count)] = {"median_ms": statistics.median(runs), "min_ms": min(runs)}
    finally:
        pipeline.close()
    return latency


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="a bundle with TensorRT engines for this GPU")
    parser.add_argument("--backend", default="tensorrt", choices=["tensorrt", "cuda"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="gpu-smoke.json")
    args = parser.parse_args(argv)
    from bodyrt.runtime.device import CudaDevice

    device = CudaDevice(0)
    report = {"gpu": device.name, "compute_capability": device.compute_capability,
              "driver_cuda_version": int(device.call("cuDriverGetVersion")), "backend": args.backend}
    checks = {"thread": check_thread, "zero": check_zero_people}
    if args.backend == "tensorrt":
        checks["sequence"] = check_sequence
    for name, check in checks.items():
        try:
            report[name] = check(args.bundle, args.backend)
        except Exception as error:
            report[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        print(f"{name:9} {'ok' if report[name]['passed'] else 'FAILED'} {json.dumps(report[name])}")
    report["latency_ms"] = measure_latency(args.bundle, args.backend, args.repeats)
    print(f"latency  {json.dumps(report['latency_ms'])}")
    with open(args.out, "w") as stream:
        json.dump(report, stream, indent=1)
    print(f"wrote {args.out}")
    return 0 if all(report[name]["passed"] for name in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
