"""Offline checks of Ray cluster-launcher files (`clusters/*.yaml`): Ray's own schema, then hashtune's rules.

    python -m hashtune.clusters clusters/aws.yaml [clusters/local.yaml ...]

`ray up` has no dry run, and Ray's schema accepts any `node_config` (a typo in an EC2 field only
fails when AWS refuses the launch). On top of `prepare_config` + `validate_config` this checks:
the node_config keys of AWS node types against EC2's RunInstances parameters (from botocore's
offline service model), a GPU worker type, a head with 0 GPUs, explicit `resources` on every
node type, setup commands that install hashtune, and that documented sweeps use s3:// storage.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from hashtune.errors import InputError

__all__ = ["ClusterConfigError", "check_cluster_file", "ec2_node_config_keys"]


class ClusterConfigError(InputError):
    """A cluster file that `ray up` would reject or that would not run hashtune as intended (one line)."""


def ec2_node_config_keys() -> set[str]:
    """Parameter names of EC2 RunInstances (what Ray passes `node_config` to), from botocore's bundled model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    return set(model.operation_model("RunInstances").input_shape.members)


def _ray_validated(raw: dict[str, Any], where: str) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except Exception as error:
        raise ClusterConfigError(f"{where}: Ray rejects it: {str(error).splitlines()[0][:300]}") from None
    return prepared


def _check_aws(raw: dict[str, Any], where: str, text: str) -> None:
    node_types = raw.get("available_node_types") or {}
    valid_keys = ec2_node_config_keys()
    for name, node_type in node_types.items():
        unknown = set(node_type.get("node_config", {})) - valid_keys
        if unknown:
            raise ClusterConfigError(
                f"{where}: available_node_types.{name}.node_config has unknown EC2 field(s) {sorted(unknown)}"
            )
        resources = node_type.get("resources")
        if not isinstance(resources, dict) or "CPU" not in resources or "GPU" not in resources:
            raise ClusterConfigError(
                f"{where}: available_node_types.{name} needs explicit resources with CPU and GPU counts"
            )
    head = node_types.get(raw.get("head_node_type"), {})
    if head.get("resources", {}).get("GPU", 0) != 0:
        raise ClusterConfigError(
            f"{where}: the head node type {raw.get('head_node_type')!r} must have GPU: 0 (DDP workers belong on GPU "
            "nodes)"
        )
    if not any(t.get("resources", {}).get("GPU", 0) > 0 for t in node_types.values()):
        raise ClusterConfigError(f"{where}: no worker node type with GPUs; add one with resources: {{GPU: N}}")
    storages = re.findall(r"--storage\s+(\S+)", text)
    if not storages or not all(s.startswith("s3://") for s in storages):
        raise ClusterConfigError(
            f"{where}: documented sweeps must use shared --storage s3://..., found {storages or 'none'}"
        )


def check_cluster_file(path: str | Path) -> dict[str, Any]:
    """Validate one cluster file; returns Ray's prepared config or raises `ClusterConfigError`."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ClusterConfigError(f"{where}: no such file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClusterConfigError(f"{where}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict) or "provider" not in raw:
        raise ClusterConfigError(f"{where}: not a Ray cluster config (no provider)")
    prepared = _ray_validated(raw, where)
    setup = " ".join(raw.get("setup_commands") or [])
    if "pip install" not in setup or not re.search(r"hashtune", setup):
        raise ClusterConfigError(f"{where}: setup_commands must install hashtune (pip install of the mounted checkout)")
    if raw["provider"].get("type") == "aws":
        _check_aws(raw, where, text)
    return prepared


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m hashtune.clusters CLUSTER.yaml [...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            check_cluster_file(path)
            print(f"{path}: ok")
        except ClusterConfigError as error:
            print(f"hashtune.clusters: error: {error}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
