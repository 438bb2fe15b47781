"""No ExPose constant is hard-coded in the runtime or the kernels: they come from the bundle manifest.

The numeric literals of the code (Python NUMBER tokens; C/C++/CUDA numbers outside comments and
strings) of runtime/, kernels/ and the CLI's run and overlay modules are checked against the ExPose
constants of bodyrt.export.layout: crop sizes, box scale, pixel divisor, focal length, normalisation.
ALLOWED lists the few places where such a number means something else, with the reason.
"""

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["runtime", "kernels", "bodyrt/run.py", "bodyrt/overlay.py"]
SKIPPED = ["runtime/capi/native"]  # issue 18's C++ port reads the same manifest; its own tests cover it
EXPOSE_LITERALS = {256.0: "body/face crop size", 224.0: "hand crop size", 255.0: "pixel divisor",
                   1.2: "body box scale", 5000.0: "focal length", 0.485: "mean", 0.456: "mean", 0.406: "mean",
                   0.229: "std", 0.224: "std", 0.225: "std", 10475.0: "SMPL-X vertex count",
                   1.0 / 255.0: "pixel scale"}
ALLOWED = {
    ("runtime/device.py", 256.0): "cuDeviceGetName's buffer length",
    ("bodyrt/overlay.py", 255.0): "8-bit alpha of the overlay mask",
}


def sources():
    for entry in CHECKED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if file.suffix in (".py", ".cu", ".cpp", ".h") and not any(relative.startswith(s) for s in SKIPPED):
                yield relative, file.read_text()


def python_numbers(text: str):
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NUMBER:
            yield token.start[0], token.string


def c_numbers(text: str):
    code = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    for number, line in enumerate(code.splitlines(), start=1):
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line.split("//", 1)[0])
        for match in re.finditer(r"(?<![\w.])(\d+\.?\d*(?:[eE][-+]?\d+)?)[fFuUlL]*", line):
            yield number, match.group(1)


def value_of(literal: str) -> float | None:
    try:
        return float(literal.replace("_", ""))
    except ValueError:  # hex, octal, complex
        return None


def test_the_scan_finds_literals():
    """The scanners see code numbers and skip comments, docstrings and strings."""
    assert list(python_numbers('x = 256  # 255\n"""1.2"""\n')) == [(1, "256")]
    assert [value for _, value in c_numbers("float a = 255.0f; // 256\n/* 1.2 */ int b = 7;")] == ["255.0", "7"]


SOURCES = dict(sources())


@pytest.mark.parametrize("relative", list(SOURCES))
def test_no_expose_literal(relative):
    text = SOURCES[relative]
    numbers = python_numbers(text) if relative.endswith(".py") else c_numbers(text)
    found = []
    for line, literal in numbers:
        value = value_of(literal)
        for constant, meaning in EXPOSE_LITERALS.items():
            if value is not None and abs(value - constant) <= 1e-9 * max(1.0, constant) \
                    and (relative, constant) not in ALLOWED:
                found.append(f"{relative}:{line}: {literal} ({meaning}; read it from the manifest)")
    assert not found, "\n".join(found)
