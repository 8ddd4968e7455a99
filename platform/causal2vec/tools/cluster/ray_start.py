"""`ray start` with patience, for a busy machine: `python -m causal2vec.tools.cluster.ray_start start ...` runs
`ray start ...`.

Ray waits a fixed 30 s for a starting node's raylet to register with the GCS (ray/_private/node.py), and the raylet
registers only once its dashboard agent has started. On a 2-core machine shared with other work the agent alone took
longer, and `ray start` gave up on a node that would have come up. Here that wait lasts up to
C2V_NODE_REGISTER_WAIT_S seconds (default 300); everything else is Ray's own CLI.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    import ray._private.services as services
    from ray.scripts.scripts import main as ray_main

    get_node = services.get_node
    patience = float(os.environ.get("C2V_NODE_REGISTER_WAIT_S", "300"))

    def patient_get_node(gcs_address, node_id):
        deadline = time.monotonic() + patience
        while True:
            try:
                return get_node(gcs_address, node_id)
            except Exception:  # noqa: BLE001 - not registered yet (RuntimeError), or the GCS too busy to answer
                if time.monotonic() > deadline or not _raylet_alive():
                    raise
                time.sleep(1)

    services.get_node = patient_get_node  # node.py calls it through the module, once a second, for 30 s
    return ray_main()


def _raylet_alive() -> bool:
    """Whether the raylet this `ray start` launched still runs (it exits when its dashboard agent is not up within
    15 s, another fixed wait): no use waiting for a dead one to register."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.name() == "raylet":
                return child.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
    return True  # not found: not started by this process, keep waiting


if __name__ == "__main__":
    sys.exit(main())
