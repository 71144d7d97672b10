"""Deployment files: the Serve config and the KubeRay RayService are what the app generates and
what Ray's own schema accepts; cluster.yaml gives every node the same auth token."""

from __future__ import annotations

from typing import Any

import ray
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeDeploySchema

from ingest.core.config import REPO_ROOT
from ingest.core.ray_env import NODE_ENV
from serve_app.deploy_config import DEPLOY, IMPORT_PATH, render


def _load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_committed_files_are_what_the_app_generates() -> None:
    for name, text in render().items():
        assert (DEPLOY / name).read_text() == text, (
            f"deploy/{name} is stale: run `python -m serve_app.deploy_config`"
        )


def test_serve_config_is_valid_for_serve_deploy_and_builds_the_app() -> None:
    schema = ServeDeploySchema.model_validate(_load("serve_config.yaml"))
    (app,) = schema.applications
    assert app.import_path == IMPORT_PATH and app.route_prefix == "/"
    assert schema.logging_config is not None and schema.logging_config.encoding == "JSON"
    # What Serve does with the import path: call the builder with the config's args.
    module, attr = IMPORT_PATH.split(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    built = build_app(
        call_user_app_builder_with_args_if_necessary(builder, {"ensure_coordinator": "false"}), name=app.name
    )
    assert {d.name for d in built.deployments} == {d.name for d in app.deployments}


def test_rayservice_has_the_serve_config_a_head_and_workers_with_token_auth() -> None:
    svc = _load("rayservice.yaml")
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")
    spec = svc["spec"]
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    assert embedded == ServeDeploySchema.model_validate(_load("serve_config.yaml"))
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) >= 2 and all(g["rayStartParams"]["metrics-export-port"] for g in groups)
    for g in groups:
        (container,) = g["template"]["spec"]["containers"]
        assert container["envFrom"][0]["secretRef"]["name"]
        assert {"name": "RAY_worker_niceness", "value": "10"} in container["env"]
        for k, v in NODE_ENV.items():  # niceness and direct ingress (ingest.core.ray_env)
            assert {"name": k, "value": v} in container["env"]
        assert any(p["name"] == "metrics" for p in container["ports"])


def test_cluster_yaml_hands_one_token_to_every_node() -> None:
    cfg = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert all("RAY_worker_niceness=10" in c for c in starts if "ray start" in c)
    for k, v in NODE_ENV.items():
        assert all(f"{k}={v}" in c for c in starts if "ray start" in c), k
    assert not cfg.get("head_setup_commands"), "a token generated on the head reaches no worker"


def _locked() -> dict[str, str]:
    import re

    text = (REPO_ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M))
    # Every pin carries at least one hash (pip's --require-hashes refuses the file otherwise).
    assert text.count("==") == len(pins) and len(re.findall(r"==\S+ \\\n +--hash=sha256:", text)) == len(pins)
    return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}


def test_lock_pins_every_dependency_and_the_venv_matches_it() -> None:
    import re
    import tomllib
    from importlib.metadata import version

    locked = _locked()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]).lower()
        assert name in locked, f"{name} is not in requirements.lock: run scripts/lock.sh"
    # scripts/bootstrap.sh installed exactly the locked versions.
    assert {n: version(n) for n in locked} == locked


def test_the_api_runs_as_many_replicas_as_the_settings_say() -> None:
    from ingest.core.config import Settings
    from serve_app.deployment import build

    for n in (1, 3):
        (api,) = build_app(build(Settings(api_replicas=n)), name="scada").deployments
        assert api.num_replicas == n
