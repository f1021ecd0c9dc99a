"""What a benchmark ran on: CPU model, threads, torch version, GPU name."""

from __future__ import annotations

import platform

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, object]:
    """A JSON-ready description of the machine and the software the numbers came from."""
    info: dict[str, object] = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(device), "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
