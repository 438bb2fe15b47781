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


class waiting:
    """A context manager for a wait that may exceed a second: `with waiting("opening bundle"): ...`.

    Nothing is shown for a wait shorter than `after` seconds. Past it, a terminal gets a spinner with
    the elapsed time, redrawn in place; a log file or pipe gets one line when the wait starts showing
    and one when it ends. `note(text)` updates the detail shown after the label (a stage, a loss).
    """

    FRAMES = "|/-\\"

    def __init__(self, label: str, stream=None, after: float = 1.0, interval: float = 0.1):
        self.label, self.after, self.interval = label, after, interval
        self.stream = stream or sys.stderr
        self.detail = ""
        self.shown = False

    def note(self, detail: str) -> None:
        self.detail = detail

    def __enter__(self):
        import threading

        self.start = time.perf_counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True)
        self._thread.start()
        return self

    def _line(self, frame: str) -> str:
        detail = f" {self.detail}" if self.detail else ""
        return f"{self.label}{detail} {frame} {time.perf_counter() - self.start:.1f}s"

    def _draw(self):
        if self._done.wait(self.after):
            return
        self.shown = True
        interactive = self.stream.isatty()
        frame = 0
        if not interactive:
            self.stream.write(f"{self.label} ...\n")
            self.stream.flush()
            return
        while not self._done.is_set():
            self.stream.write("\r" + self._line(self.FRAMES[frame % 4]) + "\033[K")
            self.stream.flush()
            frame += 1
            self._done.wait(self.interval)

    def __exit__(self, kind, value, traceback):
        self._done.set()
        self._thread.join()
        if self.shown:
            outcome = "done" if kind is None else "failed"
            prefix, end = ("\r", "\033[K\n") if self.stream.isatty() else ("", "\n")
            self.stream.write(f"{prefix}{self.label}: {outcome} in {time.perf_counter() - self.start:.1f}s{end}")
            self.stream.flush()
        return False
