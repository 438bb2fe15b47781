"""A small progress bar on stderr for long loops (images, exports, benchmarks)."""

import sys
import time


def progress(items, label: str = "", stream=None):
    """Yield from items while drawing `label [=====     ] 3/10 1.2s` on stderr; silent when empty."""
    items = list(items)
    stream = stream or sys.stderr
    total = len(items)
    start = time.perf_counter()
    interactive = stream.isatty()
    for index, item in enumerate(items):
        yield item
        done = index + 1
        if interactive or done == total:
            filled = int(30 * done / total)
            bar = "=" * filled + " " * (30 - filled)
            end = "\n" if done == total else ""
            stream.write(f"\r{label} [{bar}] {done}/{total} {time.perf_counter() - start:.1f}s{end}")
            stream.flush()
