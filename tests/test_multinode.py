"""Past one machine: a real multi-node Ray cluster on this machine (a head and 2 worker nodes, each `ray start` in its
own network namespace when this process may make them), running bulk embedding, training and serving across nodes
while a worker node is killed (kill -9 of its raylet and workers). The drills are causal2vec.tools.cluster.drills;
bench/multinode.py runs the same ones longer and writes their timelines to bench/results/multinode.{json,png}.

One cluster serves the module; each drill brings back the node it killed. Teardown stops every node, deletes the
network namespaces and links, and errors if any process or link of the cluster is left.
"""

from __future__ import annotations

import numpy as np
import pytest

from causal2vec.tools.cluster.drills.embed import embed_drill
from causal2vec.tools.cluster.drills.serve import serve_drill
from causal2vec.tools.cluster.drills.train import train_drill
from causal2vec.tools.cluster.local import LocalCluster


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(workers=2, head_cpus=4, worker_cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        report = cluster.stop()
        assert not report["left"], f"the cluster left processes or links behind: {report['left']}"


def test_the_nodes_are_separate_machines_to_ray(cluster):
    ids = cluster.wait_for_nodes()
    assert sorted(ids) == ["head", "w1", "w2"] and len(set(ids.values())) == 3
    if cluster.namespaces:  # each node its own network stack and address
        assert len({node.ip for node in cluster.nodes.values()}) == 3
        assert all(node.ip.startswith("10.23.") for node in cluster.nodes.values())


def test_bulk_embedding_runs_its_stages_on_different_nodes_and_survives_losing_one(cluster, tmp_path):
    r = embed_drill(cluster, tmp_path, docs=1000)
    assert r["encoder_nodes"] == ["head"] and len(r["decoder_nodes"]) == 1 and r["decoder_nodes"] != ["head"]
    assert r["killed"] == r["decoder_nodes"][0]
    assert 0 < r["rows_at_kill"] < r["valid_ids"], "the node was killed mid-job"
    assert r["status"] == "SUCCEEDED", r["timeline"]
    if "rerun" in r:  # the job failed with the node: the same command again finishes it on the other nodes
        rerun = r["rerun"]
        assert r["job"]["status"] == "FAILED"
        assert rerun["decoder_nodes"] and r["killed"] not in rerun["decoder_nodes"]
        summary = rerun["summary"]
        assert summary["skipped_existing"] == rerun["rows_before"] > 0, "committed rows are not embedded again"
        assert summary["rows_written"] + summary["skipped_existing"] == r["valid_ids"]
        assert summary["rejected"] == r["rejects_in_input"]
    else:
        assert r["job"]["summary"]["rows_written"] == r["valid_ids"]
    assert not r["missing"] and not r["unexpected"]
    assert r["rows_final"] == r["distinct_ids"] == r["valid_ids"], "each valid id exactly once"


def test_training_on_two_nodes_resumes_from_the_checkpoint_when_the_lost_node_is_back(cluster, tmp_path):
    r = train_drill(cluster, tmp_path, steps=30, checkpoint_every=5, kill_at=8, down_s=10)
    assert r["train_worker_nodes"] == ["w1", "w2"], "one Train worker on each worker node"
    assert r["status"] == "SUCCEEDED" and r["final_step"] == 30, r["log_tail"]
    kill = next(e for e in r["timeline"] if e["event"] == "node killed")
    assert r["resumed_from_step"] == kill["checkpoint_step"] >= 5, "resumed from the last checkpoint, not step 0"
    assert 0 < r["steps_lost"] < 30
    assert r["first_step_after_t"] > r["node_back_t"], "the new worker group waited for the node"
    losses = [loss for _, loss, _ in r["losses"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, f"the loss did not go down: {r['losses']}"


def test_serving_keeps_answering_while_a_decoder_node_is_lost(cluster):
    r = serve_drill(cluster, clients=4, before_s=6, down_s=12, after_s=4)
    assert r["placement"]["API"] == [("head", "RUNNING")] and r["placement"]["ContextEncoder"] == [("head", "RUNNING")]
    assert r["decoder_nodes"] == ["w1", "w2"], "encoder and decoder replicas on different nodes"
    assert set(r["failed_by_status"]) <= {503}, f"503 at worst: {r['failures'][:5]}"
    back = next(e["t"] for e in r["timeline"] if e["event"] == "node back")
    while_down = [status for sent, _, status, _ in r["requests_log"] if r["killed_at_t"] + 2 < sent < back]
    assert while_down and while_down.count(200) >= 0.9 * len(while_down), "answering while the node was down"
    assert r["ok"] >= 0.99 * r["requests"]
