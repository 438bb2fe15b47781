"""Bounded load test of `bodyrt serve` on loopback: throughput and p50/p95/p99 latency.

    python benchmarks/serve_load.py --bundle BUNDLE [--json serve_load.json]

Starts a local single-node Ray (127.0.0.1 only), deploys the bundle, and for every combination of
replicas (1, 2), batching (off: max_batch_size 1; on: max_batch_size 4, 10 ms wait) and concurrent
clients (1, 4, 16) sends a fixed number of requests (at least twice the clients), each client in a
closed loop (next request when its answer arrives). A cell stops at its request count or after
--max-seconds, whichever is first; the whole run stops by itself and shuts Ray down.

It also times, in this process, what fusing persons from several images into one network pass could
buy: one pipeline call with N persons against N calls with one person each, at one thread.

Without --bundle it uses the demo bundle (built once and cached; needs the export extra).
"""

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np


def cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def scene_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([rows / height, columns / width, (rows + columns) / (height + width)], axis=2) * 200
    rgb = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values, fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[position]


def run_cell(url: str, body: bytes, boxes: str, clients: int, requests_total: int, max_seconds: float) -> dict:
    """Closed-loop load: `clients` threads share a budget of requests_total, stopping at max_seconds."""
    import requests

    latencies, failures, lock = [], [], threading.Lock()
    remaining = [requests_total]
    deadline = time.monotonic() + max_seconds

    def client():
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                answer = session.post(f"{url}/v1/infer", params={"boxes": boxes}, data=body,
                                      timeout=max(5.0, deadline - time.monotonic() + 5.0))
                ok = answer.status_code == 200
            except requests.RequestException as error:
                ok, answer = False, error
            elapsed = time.perf_counter() - start
            with lock:
                (latencies if ok else failures).append(elapsed if ok else str(getattr(answer, "status_code", answer)))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_seconds + 30)
    wall = time.perf_counter() - started
    return {"clients": clients, "completed": len(latencies), "failed": len(failures), "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 3),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1), "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1), "failures": failures[:5]}


def fusion_probe(bundle: str, persons: int, repeats: int) -> dict:
    """ms for one call with `persons` persons against `persons` calls with one (one thread, same image)."""
    from bodyrt.images import decode_image
    from bodyrt.runtime import open_bundle

    pipeline = open_bundle(bundle, threads=1)
    image = decode_image(scene_jpeg(640, 480, seed=1))
    boxes = np.array([[40 + 100 * index, 20, 240 + 100 * index, 460] for index in range(persons)], np.float32)
    pipeline(image, boxes[:1])
    fused, separate = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline(image, boxes)
        fused.append(time.perf_counter() - start)
        start = time.perf_counter()
        for box in boxes:
            pipeline(image, box[None])
        separate.append(time.perf_counter() - start)
    pipeline.close()
    return {"persons": persons, "one_pass_ms": round(statistics.median(fused) * 1000, 1),
            "separate_calls_ms": round(statistics.median(separate) * 1000, 1), "repeats": repeats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle directory (default: the cached demo bundle)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per cell (default: %(default)s)")
    parser.add_argument("--replicas", default="1,2", help="replica counts (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,4", help="max_batch_size values; 1 = off (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=16, help="requests per cell, at least 2 per client "
                        "(default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time cap per cell (default: %(default)s)")
    parser.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of the JPEG sent (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="loopback HTTP port (default: %(default)s)")
    parser.add_argument("--fusion-persons", type=int, default=4, help="persons for the fusion probe; 0 skips it")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from bodyrt.serve import RequestLimits, ServeSettings, deploy, start_service

    bundle = args.bundle
    if not bundle:
        from bodyrt.export.demo import demo_bundle

        bundle = str(demo_bundle())
    width, height = (int(value) for value in args.image_size.lower().split("x"))
    body = scene_jpeg(width, height)
    boxes = json.dumps([[width * 0.2, height * 0.05, width * 0.8, height * 0.95]])
    replica_counts = [int(value) for value in args.replicas.split(",")]
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    client_counts = [int(value) for value in args.clients.split(",")]

    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_before": os.getloadavg(),
              "bundle": bundle, "image": args.image_size, "persons_per_request": 1, "cells": []}
    print(f"CPU: {report['cpu']} ({report['cores']} cores), load average before: "
          f"{', '.join(f'{value:.2f}' for value in report['load_average_before'])}", flush=True)
    if args.fusion_persons:
        report["fusion_probe"] = fusion_probe(bundle, args.fusion_persons, repeats=3)
        print(f"fusion probe: {report['fusion_probe']}", flush=True)

    base = ServeSettings(bundle=bundle, replicas=max(replica_counts), cpus_per_replica=1.0,
                         limits=RequestLimits(request_timeout_s=args.max_seconds), host="127.0.0.1",
                         port=args.port, app_name="bodyrt-load")
    service = start_service(base)
    try:
        for replicas in replica_counts:
            for batch_size in batch_sizes:
                settings = replace(base, replicas=replicas,
                                   limits=replace(base.limits, max_batch_size=batch_size, batch_wait_ms=10.0))
                deploy(settings)
                run_cell(service.url, body, boxes, clients=2 * replicas, requests_total=2 * replicas,
                         max_seconds=args.max_seconds)  # warm-up: every replica has answered once
                for clients in client_counts:
                    cell = run_cell(service.url, body, boxes, clients=clients,
                                    requests_total=max(args.requests, 2 * clients), max_seconds=args.max_seconds)
                    cell.update(replicas=replicas, max_batch_size=batch_size)
                    report["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
    finally:
        service.stop()
    report["load_average_after"] = os.getloadavg()
    print_table(report)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)
    return 0


def print_table(report: dict):
    print(f"\nCPU: {report['cpu']} ({report['cores']} cores); load average before "
          f"{report['load_average_before'][0]:.1f}, after {report['load_average_after'][0]:.1f}")
    print("| replicas | batching | clients | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|")
    for cell in report["cells"]:
        batching = "off" if cell["max_batch_size"] == 1 else f"up to {cell['max_batch_size']}"
        print(f"| {cell['replicas']} | {batching} | {cell['clients']} | {cell['completed']}"
              f"{'' if not cell['failed'] else ' (+' + str(cell['failed']) + ' failed)'} | "
              f"{cell['throughput_rps']:.2f} | {cell['p50_ms']:.0f} | {cell['p95_ms']:.0f} | {cell['p99_ms']:.0f} |")
    probe = report.get("fusion_probe")
    if probe:
        print(f"\nfusion probe: {probe['persons']} persons in one pass {probe['one_pass_ms']:.0f} ms, "
              f"in {probe['persons']} calls {probe['separate_calls_ms']:.0f} ms (one thread)")


if __name__ == "__main__":
    sys.exit(main())
