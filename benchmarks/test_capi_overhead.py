"""The cost of the C boundary: the same calls through libbodyrt from C and in Python.

libbodyrt refuses to load into a process that already runs Python, so the C side is a C program,
benchmarks/c/capi_overhead.c: it times each call with the monotonic clock (the median of batches
of 100 calls; the median of a few runs) and prints the medians. pytest-benchmark times the same
calls in Python on the same bundle, threads and image size; each benchmark stores the C median
and the difference (the boundary's cost) in its extra_info, and prints them (-s).

Short by default; BODYRT_BENCH_FULL=1 for more rounds.
"""

import json
import os
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bodyrt import __version__
from bodyrt.bench import bench_image

FULL = os.environ.get("BODYRT_BENCH_FULL") == "1"
SMALL_CALL_ROUNDS = 500 if FULL else 30  # each round: 100 calls
RUN_ROUNDS = 15 if FULL else 3
C_HOST_PROGRAM = Path(__file__).resolve().parent / "c" / "capi_overhead.c"


def c_program_box(width: int, height: int) -> np.ndarray:
    """The person box capi_overhead.c uses, (1, 4) pixels."""
    return np.float32([[0.3 * width, 0.05 * height, 0.6 * width, 0.95 * height]])


@pytest.fixture(scope="module")
def c_host_us(tmp_path_factory, bundle_dir, capi_build):
    """The C program's medians, microseconds per call: {"run_us": ..., "person_count_us": ..., ...}."""
    from bodyrt.runtime.capi.build import compile_command, run_compiler

    out = capi_build("embedded")  # the embedded library: this file measures the Python boundary
    program = tmp_path_factory.mktemp("capi-bench") / "capi_overhead"
    run_compiler(compile_command(C_HOST_PROGRAM, program, out))
    done = subprocess.run([str(program), str(bundle_dir), str(SMALL_CALL_ROUNDS), str(RUN_ROUNDS)],
                          capture_output=True, text=True, timeout=600, env={})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def python_calls(bundle_dir):
    """call name -> the same call in Python, on a 1280 x 720 image with one person (as the C program)."""
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle_dir, threads=2)  # the C default: onnxruntime, 2 threads
    image, _ = bench_image("720p", 1)
    boxes = c_program_box(image.shape[1], image.shape[0])
    result = pipeline(image, boxes)
    vertices = np.empty_like(result.outputs["vertices"])
    betas = np.empty_like(result.outputs["betas"])
    yield {
        "version": lambda: __version__,
        "person_count": lambda: len(result.outputs["vertices"]),
        "output_data": lambda: result.outputs["vertices"],
        "copy_betas": lambda: np.copyto(betas, result.outputs["betas"]),
        "copy_vertices": lambda: np.copyto(vertices, result.outputs["vertices"]),
        "run": lambda: pipeline(image, boxes),
    }
    pipeline.close()


@pytest.mark.parametrize("call", ["version", "person_count", "output_data", "copy_betas", "copy_vertices", "run"])
def test_call(benchmark, python_calls, c_host_us, call):
    benchmark.group = f"capi {call}"
    if call == "run":
        benchmark.pedantic(python_calls[call], rounds=RUN_ROUNDS, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(python_calls[call], rounds=SMALL_CALL_ROUNDS, iterations=100, warmup_rounds=1)
    python_us = statistics.median(benchmark.stats.stats.data) * 1e6
    c_us = c_host_us[f"{call}_us"]
    benchmark.extra_info.update({"python_us": python_us, "c_host_us": c_us, "boundary_us": c_us - python_us})
    print(f"\ncapi {call}: from C {c_us:.3f} us, in Python {python_us:.3f} us, difference {c_us - python_us:+.3f} us")
