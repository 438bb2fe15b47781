"""Shared, session-scoped artefacts: synthetic body models and checkpoints are built once per run."""

import pytest


def pytest_collection_modifyitems(config, items):
    from bodyrt.kernels import gpu_available_reason

    reason = gpu_available_reason()
    if reason is None:
        return
    skip_gpu = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
