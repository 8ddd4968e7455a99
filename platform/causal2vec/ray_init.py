"""How every entry point gets its Ray: the job's cluster under `ray job submit`, else a local one started here."""

from __future__ import annotations

import os


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS, or start a local Ray declaring at least 4 logical CPUs: Train workers or actor pools
    plus Ray Data's read/write tasks deadlock on 2 (PLATFORM notes)."""
    import ray

    if ray.is_initialized():
        return
    local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": max(4, os.cpu_count() or 1),
                                                        "include_dashboard": False}
    ray.init(**local)
