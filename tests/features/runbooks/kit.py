"""The runbook tests' config: a deploy script as two actions (one of them high risk), the
fake golem service, and the release and rollback runbooks over them."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from tests.botharness import BASE_CONFIG


@dataclass
class Deploys:
    dir: Path
    version_file: Path  # what golem reports: the script writes the tag here
    marker: Path  # every run of the script appends its tag here

    def runs(self) -> list[str]:
        return self.marker.read_text().split() if self.marker.exists() else []


def make_deploys(tmp_path: Path) -> Deploys:
    script = tmp_path / "deploy.sh"
    script.write_text(
        '#!/bin/sh\necho "deploying $1"\necho "$1" >> "$MARKER"\necho "$1" > "$VERSION_FILE"\n'
        'echo "deployed"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return Deploys(tmp_path, tmp_path / "version.txt", tmp_path / "runs.txt")


def _runbook(name: str, action: str, approvers: str = "") -> str:
    return f"""
[[runbooks]]
name = "{name}"
summary = "{action} golem to a tag, then check it is up and on that tag"
roles = ["oncall", "deployer"]
{approvers}
[[runbooks.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'
[[runbooks.steps]]
action = "{action}"
args = {{ tag = "{{tag}}" }}
[[runbooks.steps]]
wait = {{ health = "golem", state = "up", within = "8s", every = "0.2s" }}
[[runbooks.steps]]
verify = {{ version = "golem", equals = "{{tag}}" }}
[[runbooks.on_failure]]
post = {{ channels = ["incident"], text = "{name} of golem to {{tag}} failed at {{failure}} \
(request {{request_id}})" }}
"""


def runbooks_config(deploys: Deploys, golem_url: str, data_dir: Path | None = None) -> str:
    d = deploys.dir
    env = f'{{ MARKER = "{deploys.marker}", VERSION_FILE = "{deploys.version_file}" }}'
    head = BASE_CONFIG
    if data_dir is not None:
        head = head.replace('name = "opsbot"\n', f'name = "opsbot"\ndata_dir = "{data_dir}"\n', 1)
    return (
        head
        + f"""
[jobs]
ack_after = "0.5s"
progress_every = "0.3s"
shutdown_grace = "0.5s"

[[services]]
name = "golem"
health_url = "{golem_url}/health"
version_url = "{golem_url}/version"
timeout = "2s"

[[actions]]
name = "deploy"
argv = ["{d}/deploy.sh", "{{tag}}"]
env = {env}
risk = "write"
roles = ["oncall", "deployer"]
lock_group = "deploy"
timeout = "10s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'

[[actions]]
name = "rollback"
argv = ["{d}/deploy.sh", "{{tag}}"]
env = {env}
risk = "high"
roles = ["oncall", "deployer"]
approver_roles = ["oncall"]
lock_group = "deploy"
timeout = "10s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'
"""
        + _runbook("release", "deploy")
        + _runbook("rollback", "rollback", 'approver_roles = ["oncall"]\napproval_ttl = "10m"')
        + """
[[checks]]
name = "golem-health"
kind = "health"
service = "golem"
interval = "1h"

[[runbooks]]
name = "golem-ok"
summary = "Is golem healthy, by its check"
roles = ["oncall"]
[[runbooks.steps]]
verify = { check = "golem-health" }

[policy.commands.runbook]
roles = ["oncall", "deployer"]
[policy.commands.approve]
roles = ["*"]
[policy.commands.deny]
roles = ["*"]
"""
    )
