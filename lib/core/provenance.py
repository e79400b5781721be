"""Provenance of a run: code version, hardware, library versions, time."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]  # lib/core/provenance.py -> the repository


def git_revision() -> str:
    """The commit hash, with '+dirty' when the working tree has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def provenance(device: torch.device | str = "cpu") -> dict:
    import numpy
    import torchvision

    return {
        "git": git_revision(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "hardware": hardware(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }
