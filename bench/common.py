"""What every benchmark records next to its figures: the hardware, the exact command, and where results go."""

from __future__ import annotations

import json
import os
import platform as stdlib_platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def hardware() -> dict:
    info = {"cpu": stdlib_platform.processor() or stdlib_platform.machine(), "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "torch": torch.__version__}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    from causal2vec.model.devices import cpu_has_native_bf16

    info["cpu_native_bf16"] = cpu_has_native_bf16()
    return info


def command() -> str:
    """The command line that produced a result, as a user would type it."""
    return " ".join(["python", *sys.argv])


def pyplot():
    """matplotlib's pyplot on the file-only backend (benches run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finished_rows(done_file: Path, published: Path, report: dict, same: tuple[str, ...], rows_key: str) -> dict:
    """Rows already measured: from this work folder, else from the published results when they were measured under
    the same `same` report fields (a run split over several sessions, whose work folders are gone, resumes from
    what it committed). A published row keeps the hardware it ran on. Published results of other settings are
    never overwritten: that run needs its own --output."""
    earlier = json.loads(published.read_text()) if published.exists() else None
    differ = [key for key in same if earlier is not None and earlier.get(key) != report[key]]
    if differ:
        raise SystemExit(f"{published} holds results measured with other {', '.join(differ)}; give this run its own "
                         f"--output")
    if done_file.exists():
        return json.loads(done_file.read_text())
    if earlier is None:
        return {}
    return {name: {"hardware": earlier["hardware"]} | row for name, row in earlier[rows_key].items()}
