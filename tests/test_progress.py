"""Waits over a second say what is happening; short ones stay quiet."""

import io
import time

import pytest

from bodyrt.progress import waiting


def test_a_long_wait_is_announced_and_its_end_reported():
    stream = io.StringIO()
    with waiting("bodyrt: opening bundle/", stream=stream, after=0.01) as spinner:
        spinner.note("hashing")
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "bodyrt: opening bundle/ ..."
    assert lines[1].startswith("bodyrt: opening bundle/: done in ")


def test_a_short_wait_prints_nothing():
    stream = io.StringIO()
    with waiting("bodyrt: opening", stream=stream, after=60):
        pass
    assert stream.getvalue() == ""


def test_a_failed_wait_says_so_and_the_error_passes_through():
    stream = io.StringIO()
    with pytest.raises(ValueError):
        with waiting("convert", stream=stream, after=0.01):
            time.sleep(0.2)
            raise ValueError("bad")
    assert stream.getvalue().splitlines()[-1].startswith("convert: failed in ")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_spinner_with_the_detail():
    stream = Terminal()
    with waiting("convert: stage 1/3", stream=stream, after=0.01, interval=0.02) as spinner:
        spinner.note("loss 0.25")
        time.sleep(0.3)
    text = stream.getvalue()
    assert "\rconvert: stage 1/3 loss 0.25 " in text and text.rstrip().endswith("s\x1b[K")
