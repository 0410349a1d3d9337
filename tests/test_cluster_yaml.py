"""cluster.yaml is a config `ray up` accepts, and keeps the promises docs/cluster.md makes.

Validation goes through the functions `ray up` itself calls
(`ray.autoscaler._private.commands._bootstrap_config`): `prepare_config` merges the AWS
defaults shipped with Ray and fills per-type worker limits, then `validate_config` checks the
result against `ray/autoscaler/ray-schema.json` with jsonschema (a ray[default] dependency)
plus Ray's own cross-field rules. The raw file is also checked against the schema, so a
typo cannot hide behind a default. No network, no AWS credentials: the steps of `ray up`
that need EC2/IAM (resource autodetection, instance profile, subnets, key pair) are skipped.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray._private.authentication.authentication_token_setup import _get_default_token_path
from ray.autoscaler._private.docker import docker_start_cmds
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).with_name("ray-schema.json")

INSTALL_PATH = "/home/ray/connector-runtime"
TOKEN_PATH = "/home/ray/ray_auth_token"
PROFILE_ARN = re.compile(r"^arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")


def _load() -> dict[str, Any]:
    with CLUSTER_YAML.open() as f:
        return yaml.safe_load(f)


def _prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` validates: the config merged with Ray's AWS defaults."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return _load()


@pytest.fixture(scope="module")
def cfg(raw: dict[str, Any]) -> dict[str, Any]:
    return _prepared(raw)


def _docker_env(cfg: dict[str, Any]) -> dict[str, str]:
    env = {}
    for option in cfg["docker"]["run_options"]:
        words = shlex.split(option)
        if words[0] in ("--env", "-e"):
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


# --- Ray's own validation ---------------------------------------------------------------


def test_raw_file_matches_ray_schema(raw: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(raw, schema)


def test_ray_up_validation_accepts_it(cfg: dict[str, Any]) -> None:
    # The fixture already ran prepare_config + validate_config; check it kept our values
    # rather than Ray's defaults (a shallow merge would silently keep default node types).
    assert cfg["cluster_name"] == "connector-runtime"
    assert set(cfg["available_node_types"]) == {"head", "extraction"}
    assert cfg["head_node_type"] == "head"


@pytest.mark.parametrize(
    ("mutate", "bad_key"),
    [
        (lambda c: c.update(idle_timeout_minute=5), "idle_timeout_minute"),
        (lambda c: c.update(setup_comands=c.pop("setup_commands")), "setup_comands"),
        (lambda c: c["available_node_types"]["extraction"].update(max_worker=10), "max_worker"),
        (lambda c: c["available_node_types"]["head"].update(resources={"CPU": -1}), "-1"),
        (lambda c: c["docker"].update(imag="rayproject/ray"), "imag"),
    ],
    ids=["typo-top-level", "typo-setup-commands", "typo-node-type", "negative-cpu", "typo-docker"],
)
def test_validation_rejects_broken_config(raw: dict[str, Any], mutate: Any, bad_key: str) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(bad_key)):
        _prepared(broken)


def test_validation_rejects_unknown_head_node_type(raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "ray.head.default"
    with pytest.raises(ValueError, match="head_node_type"):
        _prepared(broken)


# --- what a user relies on -------------------------------------------------------------


def test_provider(cfg: dict[str, Any]) -> None:
    provider = cfg["provider"]
    assert provider["type"] == "aws"
    assert provider["region"] == "us-west-2"
    assert provider["cache_stopped_nodes"] is False


def test_scaling_knobs(cfg: dict[str, Any]) -> None:
    assert cfg["idle_timeout_minutes"] == 5
    assert cfg["upscaling_speed"] == 1.0


def test_head_runs_no_tasks(cfg: dict[str, Any]) -> None:
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["node_config"]["InstanceType"] == "m6i.large"
    assert "InstanceMarketOptions" not in head["node_config"], "the head must not be spot"


def test_extraction_group_autoscales(cfg: dict[str, Any]) -> None:
    group = cfg["available_node_types"]["extraction"]
    assert group["node_config"]["InstanceType"] == "m6i.2xlarge"
    assert group["min_workers"] == 0
    assert group["max_workers"] == 10
    assert group["max_workers"] > group["min_workers"]
    # Empty resources: the AWS provider autodetects CPU/memory from the instance type.
    assert group["resources"] == {}
    # The global cap must not undercut the group (Ray's default global cap is 2).
    worker_max = sum(
        t["max_workers"] for name, t in cfg["available_node_types"].items() if name != "head"
    )
    assert cfg["max_workers"] >= worker_max


@pytest.mark.parametrize("node_type", ["head", "extraction"])
def test_node_types_have_instance_profiles(cfg: dict[str, Any], node_type: str) -> None:
    profile = cfg["available_node_types"][node_type]["node_config"]["IamInstanceProfile"]
    assert PROFILE_ARN.match(profile["Arn"]), profile


def test_head_and_workers_have_distinct_profiles(cfg: dict[str, Any]) -> None:
    # Only the head may launch instances; workers get S3 only.
    types = cfg["available_node_types"]
    head_arn = types["head"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert head_arn != types["extraction"]["node_config"]["IamInstanceProfile"]["Arn"]


@pytest.mark.parametrize("which", ["head_setup_commands", "worker_setup_commands"])
def test_every_node_installs_connector_runtime(cfg: dict[str, Any], which: str) -> None:
    # After merge_setup_commands, as the launcher runs them on each kind of node.
    installs = [
        cmd
        for cmd in cfg[which]
        if re.search(r"\bpip install\b", cmd) and INSTALL_PATH in shlex.split(cmd)
    ]
    assert installs, cfg[which]


def test_installed_path_is_this_working_copy(cfg: dict[str, Any]) -> None:
    local = cfg["file_mounts"][INSTALL_PATH]
    source = (REPO / local).resolve()
    assert source == REPO, "run `ray up` from the repository root"
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    assert project["name"] == "connector-runtime"
    # rsync honours .gitignore, which keeps the local virtualenv off the cluster.
    assert ".gitignore" in cfg["rsync_filter"]
    assert ".venv/" in (source / ".gitignore").read_text().split()


def test_mounts_reach_the_container(cfg: dict[str, Any]) -> None:
    # The `docker run` Ray issues on each node: every file mount is bind-mounted at the
    # path the setup commands and RAY_AUTH_TOKEN_PATH use, and our env vars are passed.
    docker = cfg["docker"]
    command = docker_start_cmds(
        cfg["auth"]["ssh_user"],
        docker["image"],
        cfg["file_mounts"],
        docker["container_name"],
        docker["run_options"],
        cfg["cluster_name"],
        "/home/ray",
        "docker",
    )
    words = shlex.split(command)
    destinations = {words[i + 1].rsplit(":", 1)[1] for i, w in enumerate(words) if w == "-v"}
    assert {INSTALL_PATH, TOKEN_PATH} <= destinations
    assert "RAY_AUTH_MODE=token" in words
    assert docker["image"] in words


def test_token_auth_enabled_on_every_node(cfg: dict[str, Any]) -> None:
    env = _docker_env(cfg)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == TOKEN_PATH
    # The mounted token is the one `ray get-auth-token --generate` writes locally.
    local = os.path.expanduser(cfg["file_mounts"][TOKEN_PATH])
    assert Path(local) == _get_default_token_path()
    assert "RAY_AUTH_TOKEN" not in env, "never put the token itself in the config"


def test_store_url_set_for_jobs(cfg: dict[str, Any]) -> None:
    store = _docker_env(cfg)["CONNECTOR_RUNTIME_STORE"]
    assert store.startswith("s3://")
    assert "@" not in store and "?" not in store, "no credentials in the store URL"


def test_job_stop_leaves_time_to_record_cancelled(cfg: dict[str, Any]) -> None:
    # Ray SIGKILLs a stopped job's driver after RAY_JOB_STOP_WAIT_TIME_S (default 3 s).
    assert int(_docker_env(cfg)["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_dashboard_stays_on_localhost(cfg: dict[str, Any]) -> None:
    starts = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 1
    words = shlex.split(starts[0].replace(";", " ; "))
    assert "--head" in words
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in words
    assert "--dashboard-host=127.0.0.1" in words
    assert not any("0.0.0.0" in w for w in words)


def test_workers_join_the_head(cfg: dict[str, Any]) -> None:
    starts = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 1
    assert "--address=$RAY_HEAD_IP:6379" in shlex.split(starts[0].replace(";", " ; "))
