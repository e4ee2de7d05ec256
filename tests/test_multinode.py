"""A 2-node Ray cluster simulated on one host: a 2-worker run placed on both nodes (SPREAD)."""

import os
import shutil

import pytest
import ray
from ray.cluster_utils import Cluster
from ray_helpers import short_temp_dir, train_workers

from benchmarks.servers import free_port
from hashtune.config import load_config
from hashtune.train.distributed import fit_distributed

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-multinode")]


@pytest.fixture
def two_node_cluster(monkeypatch):
    temp_dir = short_temp_dir("rc")
    # Cluster writes the head's address into Ray's default temp dir (RAY_TMPDIR/ray), which a fresh machine lacks:
    # point it into this test's folder, which exists
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    os.makedirs(os.path.join(temp_dir, "ray"))
    # as hashtune's own local Ray (`start_local_ray`), for the other pytest worker's Ray beside it: the agent on a free
    # port, and the cluster's processes told their GCS (Train V2's placement-group cleaner asks the State API)
    gcs_port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{gcs_port}")
    cluster = Cluster(initialize_head=False)
    try:  # a head that started but failed later is shut down too: left running, it hangs the next test's Ray
        cluster.add_node(
            num_cpus=1,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=free_port(),  # `ray.init` moves past a taken 8265, a `Cluster` head fails
            dashboard_agent_listen_port=None,
            gcs_server_port=gcs_port,
            temp_dir=temp_dir,
        )
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_workers_spread_over_two_nodes(two_node_cluster, tmp_path):
    assert len([node for node in ray.nodes() if node["Alive"]]) == 2
    config = load_config(
        overrides=[
            "model.depth=2",
            "model.embed_dim=32",
            "model.num_heads=2",
            "train.epochs=2",
            "train.eval_every=1",
            "train.warmup_epochs=0",
        ]
    )
    metrics = fit_distributed(config, run_dir=tmp_path / "run", workers=2, placement_strategy="SPREAD")
    assert metrics["epoch"] == 2 and "test/mAP" in metrics
    assert len({worker.node_id for worker in train_workers()}) == 2
