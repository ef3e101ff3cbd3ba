"""deploy/kubernetes/: every manifest is valid against the Kubernetes schemas (offline,
strict: an unknown or misspelled field fails), and the manifests fit opsbot: the replicas
run `opsbot run` and are probed on its port, the Job runs `opsbot db upgrade`, the PDB
covers the replicas, every secret they read exists, and the ConfigMap's opsbot.toml passes
the real `opsbot check-config` with the environment the pods get."""

from __future__ import annotations

import copy
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.processes import ROOT, clean_env, run_opsbot

MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release still maintained upstream when these were written; the
# validator ships its schemas (strict variants included), so nothing is downloaded.
KUBERNETES_VERSION = "1.33.0"
CONFIG_PATH = "/etc/opsbot/opsbot.toml"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


DOCUMENTS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


BOT = _one("StatefulSet", "opsbot")
JOB = _one("Job", "opsbot-migrate")
SECRET = _one("Secret", "opsbot-secrets")
CONFIG_MAP = _one("ConfigMap", "opsbot-config")
CONFIG = tomllib.loads(CONFIG_MAP["data"]["opsbot.toml"])


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _secret_keys() -> set[str]:
    return set(SECRET.get("stringData", {})) | set(SECRET.get("data", {}))


def _env(workload: dict[str, Any]) -> dict[str, str]:
    """The environment the workload's container gets, secrets read from the Secret."""
    env = {}
    for var in _container(workload).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRET["stringData"][ref["key"]]
    return env


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _config_mount(workload: dict[str, Any]) -> None:
    """``CONFIG_PATH`` in the container is the ConfigMap's opsbot.toml."""
    spec = workload["spec"]["template"]["spec"]
    directory, _, key = CONFIG_PATH.rpartition("/")
    (mount,) = [m for m in _container(workload)["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == CONFIG_MAP["metadata"]["name"]
    assert key in CONFIG_MAP["data"]


@pytest.mark.parametrize(
    ("source", "document"),
    DOCUMENTS,
    ids=[f"{source}:{doc['kind']}/{doc['metadata']['name']}" for source, doc in DOCUMENTS],
)
def test_each_manifest_is_valid_against_the_kubernetes_schema(
    source: str, document: dict[str, Any]
) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_misspelled_field_fails_validation() -> None:
    broken = copy.deepcopy(BOT)
    container = _container(broken)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_replicas_run_opsbot_run_probed_on_its_http_port() -> None:
    container = _container(BOT)
    assert [*container["command"], *container["args"]] == ["opsbot", "run", "--config", CONFIG_PATH]
    _config_mount(BOT)
    assert BOT["spec"]["replicas"] >= 2
    env = _env(BOT)
    # The environment wins over the file (docs/configuration.md).
    port = int(env.get("OPSBOT_HTTP_PORT", CONFIG["http"]["port"]))
    assert env.get("OPSBOT_HTTP_HOST", CONFIG["http"]["host"]) == "0.0.0.0"
    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    assert {_port(container, p["port"]) for p in probes.values()} == {port}


def test_each_replica_has_a_stable_id_and_its_own_spool() -> None:
    # No replica_id in the shared config: each pod's is its host name, which a
    # StatefulSet keeps across restarts (opsbot-0, opsbot-1, ...).
    assert BOT["kind"] == "StatefulSet"
    assert "replica_id" not in CONFIG["bot"]
    # Either would make the host name something else than the pod's name: the node's
    # (shared by every pod on it) or a name the template fixes for all replicas.
    spec = BOT["spec"]["template"]["spec"]
    assert not {"hostNetwork", "hostname", "setHostnameAsFQDN"} & spec.keys()
    data_dir = _env(BOT).get("OPSBOT_DATA_DIR", CONFIG["bot"]["data_dir"])
    (mount,) = [m for m in _container(BOT)["volumeMounts"] if m["mountPath"] == data_dir]
    claims = [c["metadata"]["name"] for c in BOT["spec"]["volumeClaimTemplates"]]
    assert mount["name"] in claims


def test_several_replicas_share_redis_and_take_telegram_by_webhook() -> None:
    assert CONFIG["state"]["redis_url"].startswith("redis://")
    assert CONFIG["telegram"]["mode"] == "webhook"
    assert CONFIG["telegram"]["webhook_host"] == "0.0.0.0"
    service = _one("Service", "opsbot")
    ports = {_port(_container(BOT), p["targetPort"]) for p in service["spec"]["ports"]}
    assert CONFIG["telegram"]["webhook_port"] in ports
    pods = BOT["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()


def test_the_migration_job_runs_opsbot_db_upgrade_with_the_bots_image() -> None:
    container = _container(JOB)
    assert [*container["command"], *container["args"]] == [
        "opsbot", "db", "upgrade", "--config", CONFIG_PATH,
    ]  # fmt: skip
    assert container["image"] == _container(BOT)["image"]
    _config_mount(JOB)
    assert _env(JOB)["OPSBOT_DATABASE_URL"] == _env(BOT)["OPSBOT_DATABASE_URL"]
    assert JOB["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_disruption_budget_covers_the_replicas_and_leaves_most_running() -> None:
    pdb = _one("PodDisruptionBudget", "opsbot")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= BOT["spec"]["template"]["metadata"]["labels"].items()
    assert selector == BOT["spec"]["selector"]["matchLabels"]
    # The migration Job's pods are not counted as replicas.
    assert not selector.items() <= JOB["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"].get("maxUnavailable") == 1


def test_every_secret_reference_names_a_key_the_secret_defines() -> None:
    references = []
    for _, doc in DOCUMENTS:
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in template.get("containers", []) + template.get("initContainers", []):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    references.append((doc["metadata"]["name"], ref["name"], ref["key"]))
    assert references
    for workload, name, key in references:
        assert name == SECRET["metadata"]["name"], f"{workload} reads a Secret {name}"
        assert key in _secret_keys(), f"{workload} reads {key}, which {name} does not define"


def test_opsbot_pods_get_no_service_environment_and_run_locked_down() -> None:
    # Service links would put OPSBOT_SERVICE_HOST, OPSBOT_PORT... into the environment, in
    # the namespace opsbot reads its own variables from.
    for workload in (BOT, JOB):
        spec = workload["spec"]["template"]["spec"]
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert _container(workload)["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_replicas_request_resources_in_kubernetes_quantities() -> None:
    # The schema takes any string for a quantity; the API server would refuse "1 GB".
    quantity = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|k|M|G)?$")
    resources = _container(BOT)["resources"]
    for value in (
        resources["requests"]["cpu"],
        resources["requests"]["memory"],
        resources["limits"]["memory"],
    ):
        assert quantity.match(str(value)), f"{value!r} is not a quantity"


def test_the_configmap_passes_check_config_with_the_pods_environment(tmp_path: Path) -> None:
    config = tmp_path / "opsbot.toml"
    config.write_text(CONFIG_MAP["data"]["opsbot.toml"])
    env = clean_env(**_env(BOT))

    # The template as shipped: its audit key placeholder is refused, so nobody runs the
    # bot with a key that is printed in the repository.
    refused = run_opsbot("check-config", str(config), env=env)
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "audit.key" in refused.stdout + refused.stderr

    # With a real key (`openssl rand -hex 32`), as docs/deploy.md says to make it.
    env["OPSBOT_AUDIT_KEY"] = secrets.token_hex(32)
    checked = run_opsbot("check-config", str(config), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ": ok (" in checked.stdout
    assert "warning" not in checked.stdout
