"""Cluster-launcher files validate offline with Ray's own validator plus hashtune's rules."""

from pathlib import Path

import pytest
import yaml

from hashtune.clusters import ClusterConfigError, check_cluster_file, ec2_node_config_keys
from hashtune.clusters import main as clusters_main

CLUSTERS = sorted((Path(__file__).resolve().parent.parent / "clusters").glob("*.yaml"))


def test_aws_and_local_clusters_are_shipped():
    assert {path.name for path in CLUSTERS} >= {"aws.yaml", "local.yaml"}
    assert (CLUSTERS[0].parent / "README.md").is_file()


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_every_cluster_file_passes_ray_and_hashtune_checks(path):
    prepared = check_cluster_file(path)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_cluster_shape():
    raw = yaml.safe_load((CLUSTERS[0].parent / "aws.yaml").read_text())
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["resources"]["trial_driver"] > 0
    assert any(t["resources"]["GPU"] > 0 and t["max_workers"] > 0 for t in raw["available_node_types"].values())
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])
    text = (CLUSTERS[0].parent / "aws.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text  # no credentials in the file


def _variant(tmp_path, change) -> Path:
    raw = yaml.safe_load((CLUSTERS[0].parent / "aws.yaml").read_text())
    change(raw)
    path = tmp_path / "variant.yaml"
    path.write_text("# ray submit ... --storage s3://bucket/prefix\n" + yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["available_node_types"]["gpu_worker"]["node_config"].update(InstanceTyp="g5.xlarge"),
            r"gpu_worker.node_config has unknown EC2 field\(s\) \['InstanceTyp'\]",
        ),
        (lambda c: c["available_node_types"]["head"]["resources"].update(GPU=1), r"must have GPU: 0"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(resources={}),
            r"gpu_worker needs explicit resources",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
            r"Ray rejects it: 'resources' is a required property",
        ),
        (lambda c: c.update(setup_commands=["echo hi"]), r"setup_commands must install hashtune"),
        (lambda c: c.update(max_workerz=3), r"Ray rejects it"),
        (
            lambda c: [c["available_node_types"].pop(n) for n in ("gpu_worker", "gpu_worker_8x")],
            r"no worker node type with GPUs",
        ),
    ],
)
def test_cluster_mistakes_are_one_line(tmp_path, change, message):
    with pytest.raises(ClusterConfigError, match=message) as error:
        check_cluster_file(_variant(tmp_path, change))
    assert "\n" not in str(error.value)


def test_ec2_keys_come_from_botocore_and_cli_reports(tmp_path, capsys):
    assert {"InstanceType", "ImageId", "BlockDeviceMappings", "InstanceMarketOptions"} <= ec2_node_config_keys()
    assert clusters_main([str(CLUSTERS[0])]) == 0
    assert clusters_main([str(tmp_path / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
