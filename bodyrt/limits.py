"""Bounds on resource arguments, checked before anything is allocated.

Threads: 1 to the number of CPUs this machine has (os.cpu_count()). More threads than CPUs never
makes a stage faster, and each costs memory: --threads 100000 once grew a process to 7.7 GB.
"""

import os

from bodyrt.errors import InputError


def max_threads() -> int:
    return os.cpu_count() or 1


def check_threads(threads, argument: str = "threads") -> int:
    """threads as an int in 1..max_threads(), else InputError naming the argument."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise InputError(f"{argument} must be a whole number, got {threads!r}")
    if not 1 <= threads <= max_threads():
        raise InputError(f"{argument} must be between 1 and {max_threads()} (this machine's CPUs), got {threads}")
    return threads


def default_threads() -> int:
    """The CLI's default: 2, or 1 on a one-CPU machine."""
    return min(2, max_threads())
