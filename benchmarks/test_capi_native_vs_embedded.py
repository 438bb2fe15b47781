"""The native libbodyrt against the embedded one, from C: first call, accessors, parallel pipelines.

Both libraries run the same C programs on the same bundle:
    benchmarks/c/capi_overhead.c    the first bodyrt_create and bodyrt_run of a fresh process, then
                                    the median cost of each accessor (batches of 100 calls)
    benchmarks/c/capi_throughput.c  runs per second: 1 pipeline with 2 intra-op threads, against 2
                                    pipelines with 1 intra-op thread each on 2 host threads
Each library runs its default backend (native: OpenVINO; embedded: ONNX Runtime), fp32, 1280 x 720,
one person. The numbers are printed (-s) and stored in the benchmark's extra_info; nothing is
asserted about them. Short by default; BODYRT_BENCH_FULL=1 for more rounds.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from bodyrt.runtime.capi.build import compile_command, run_compiler

FULL = os.environ.get("BODYRT_BENCH_FULL") == "1"
CALL_ROUNDS = 200 if FULL else 20
RUN_ROUNDS = 10 if FULL else 3
THROUGHPUT_RUNS = 20 if FULL else 4
C_DIR = Path(__file__).resolve().parent / "c"


def c_program(capi_dir: Path, name: str) -> Path:
    program = capi_dir / name
    if not program.is_file():
        run_compiler(compile_command(C_DIR / f"{name}.c", program, capi_dir))
    return program


def run_json(command, cache_dir) -> dict:
    # a fresh OpenVINO cache directory: the first call includes compiling, as on a new machine
    env = {"BODYRT_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["native", "embedded"])
def test_first_call_and_accessors(kind, capi_build, bundle_dir, tmp_path, benchmark):
    program = c_program(capi_build(kind), "capi_overhead")
    cold = run_json([program, bundle_dir, CALL_ROUNDS, RUN_ROUNDS], tmp_path / "cache")
    warm = run_json([program, bundle_dir, CALL_ROUNDS, RUN_ROUNDS], tmp_path / "cache")  # cache filled
    benchmark.group = "capi native vs embedded"
    benchmark.extra_info.update({"cold": cold, "warm_cache": warm})
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n{kind}: cold create {cold['create_us'] / 1e3:.0f} ms + first run {cold['first_run_us'] / 1e3:.0f} ms; "
          f"cached create {warm['create_us'] / 1e3:.0f} ms + first run {warm['first_run_us'] / 1e3:.0f} ms; "
          f"run {warm['run_us'] / 1e3:.1f} ms; " +
          ", ".join(f"{call} {warm[f'{call}_us']:.3f} us"
                    for call in ("version", "person_count", "output_data", "copy_betas", "copy_vertices")))


@pytest.mark.parametrize("kind", ["native", "embedded"])
def test_two_pipelines_on_two_threads(kind, capi_build, bundle_dir, tmp_path, benchmark):
    program = c_program(capi_build(kind), "capi_throughput")
    result = run_json([program, bundle_dir, THROUGHPUT_RUNS], tmp_path / "cache")
    benchmark.group = "capi native vs embedded"
    benchmark.extra_info.update(result)
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n{kind}: 1 pipeline x 2 threads {result['shared_runs_per_s']:.2f} runs/s; 2 pipelines x 1 thread on "
          f"2 threads {result['per_thread_runs_per_s']:.2f} runs/s "
          f"({result['per_thread_runs_per_s'] / result['shared_runs_per_s']:.2f}x)")
