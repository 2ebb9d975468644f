"""Shared pytest fixtures and the CUDA skip rule."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    "Skip tests marked `cuda` with a reason when torch sees no GPU."
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_medsyn(tmp_path):
    "Run the `medsyn` console script in a subprocess; returns CompletedProcess."

    def _run(*args, cwd=None, timeout=600, env=None):
        e = dict(os.environ, **(env or {}))
        e.setdefault("MEDSYN_RUNS", str(tmp_path / "runs"))
        exe = shutil.which("medsyn") or sys.executable
        cmd = [exe, *args] if exe != sys.executable else [sys.executable, "-m", "medsyn.cli", *args]
        return subprocess.run(cmd, cwd=cwd or tmp_path, capture_output=True, text=True, timeout=timeout, env=e)

    return _run
