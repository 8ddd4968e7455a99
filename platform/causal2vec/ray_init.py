"""How every entry point gets its Ray and its environment, and how a user's error comes back out of a Ray task."""

from __future__ import annotations

import os

from causal2vec.errors import Causal2VecError

# Every job, CLI verb, bench and demo runs with these unless the caller set them: nothing reaches a model hub at run
# time, tokenizers do not fork threads under Ray's workers, Ray sends no usage statistics.
JOB_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def job_environment() -> None:
    """Apply JOB_ENVIRONMENT where the caller has not chosen otherwise (Ray passes it on to workers it starts)."""
    for key, value in JOB_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS, or start a local Ray declaring at least 4 logical CPUs: Train workers or actor pools
    plus Ray Data's read/write tasks deadlock on 2 (PLATFORM notes)."""
    import ray

    if ray.is_initialized():
        return
    local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": max(4, os.cpu_count() or 1),
                                                        "include_dashboard": False}
    ray.init(**local)


def ray_call(fn_or_ref):
    """Run a Ray call; a Causal2VecError raised inside a task comes back as itself, not wrapped. Ray Data's
    UserCodeException drops the original exception object, keeping only its traceback text, so the message is
    read from there."""
    import ray

    try:
        return ray.get(fn_or_ref) if isinstance(fn_or_ref, ray.ObjectRef) else fn_or_ref()
    except Causal2VecError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        for _ in range(10):  # RayTaskError.cause / __cause__ chains are short; never loop forever
            if cause is None:
                break
            if isinstance(cause, Causal2VecError):
                raise Causal2VecError(str(cause)) from exc
            cause = getattr(cause, "cause", None) or cause.__cause__
        marker = f"{Causal2VecError.__module__}.{Causal2VecError.__name__}: "
        line = next((ln for ln in str(exc).splitlines() if ln.lstrip().startswith(marker)), None)
        if line is not None:
            raise Causal2VecError(line.lstrip().removeprefix(marker)) from exc
        raise
