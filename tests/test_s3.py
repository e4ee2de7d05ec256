"""`--storage s3://...` for real, against moto's S3 server on 127.0.0.1 (started and stopped here)."""

import os

import pytest
from ray_helpers import short_temp_dir

from benchmarks.servers import moto_s3_server
from hashtune.sweep.cli import main as sweep_main
from hashtune.train.cli import main as train_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-s3")]

BUCKET = "hashtune-test"
TINY = [
    "model.depth=1",
    "model.embed_dim=16",
    "model.num_heads=2",
    "train.epochs=2",
    "train.eval_every=1",
    "train.warmup_epochs=0",
]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with an empty bucket; AWS_* variables point boto3 and pyarrow at it."""
    server = moto_s3_server()
    endpoint = server.url
    saved = {
        key: os.environ.get(key)
        for key in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        server.start()
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", autouse=True)
def ray_session(s3):
    """One local Ray for both tests, started once the AWS_* variables point at the S3 server (its workers inherit
    them)."""
    from ray_helpers import local_ray

    with local_ray(num_cpus=2):
        yield


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_sweep_state_and_checkpoints_land_in_s3_and_resume_from_it(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", short_temp_dir())
    storage = f"s3://{BUCKET}/sweeps"
    assert sweep_main(["--space", "smoke", "--storage", storage, "--results-dir", str(tmp_path)]) == 0
    keys = _keys(s3, "sweeps/smoke/")
    assert any(key.endswith(".pkl") or "experiment_state" in key for key in keys), keys[:20]
    assert sum(key.endswith("checkpoint.pt") for key in keys) >= 2  # both trials' checkpoints
    assert not (tmp_path / "ray").exists()  # nothing went to the local default
    # resume from the bucket: the finished sweep is restored, nothing re-run or duplicated
    assert sweep_main(["--space", "smoke", "--storage", storage, "--resume", "--results-dir", str(tmp_path)]) == 0
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len([r for r in runs if r.data.tags.get("hashtune.role") != "sweep"]) == 2


def test_train_through_ray_train_stores_checkpoints_in_s3(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", short_temp_dir())
    assert (
        train_main(
            [
                "--out",
                str(tmp_path / "run"),
                "--workers",
                "1",
                "--storage",
                f"s3://{BUCKET}/train",
                "--no-progress",
                *TINY,
            ]
        )
        == 0
    )
    keys = _keys(s3, "train/")
    assert any(key.endswith("checkpoint.pt") for key in keys)
    assert (tmp_path / "run" / "metrics.json").is_file()
