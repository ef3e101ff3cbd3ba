"""Every chat command, in one visible list. Add a module, then add its SPEC here."""

from typing import Any

from bot.kernel.command import CommandSpec
from commands.ack import SPEC as ACK
from commands.alerts import SPEC as ALERTS
from commands.approvals import SPEC as APPROVALS
from commands.approve import SPEC as APPROVE
from commands.audit import SPEC as AUDIT
from commands.cancel import SPEC as CANCEL
from commands.checks import SPEC as CHECKS
from commands.deny import SPEC as DENY
from commands.health import SPEC as HEALTH
from commands.heartbeat import SPEC as HEARTBEAT
from commands.help import SPEC as HELP
from commands.jobs import SPEC as JOBS
from commands.policy import SPEC as POLICY
from commands.queue import SPEC as QUEUE
from commands.rollback import SPEC as ROLLBACK
from commands.run import SPEC as RUN
from commands.runbook import SPEC as RUNBOOK
from commands.silence import SPEC as SILENCE
from commands.silences import SPEC as SILENCES
from commands.status import SPEC as STATUS
from commands.unsilence import SPEC as UNSILENCE
from commands.version import SPEC as VERSION
from commands.whoami import SPEC as WHOAMI
from commands.workers import SPEC as WORKERS

COMMANDS: list[CommandSpec[Any, Any]] = [
    HELP,
    WHOAMI,
    HEALTH,
    VERSION,
    STATUS,
    POLICY,
    AUDIT,
    QUEUE,
    WORKERS,
    ROLLBACK,
    RUN,
    RUNBOOK,
    APPROVALS,
    APPROVE,
    DENY,
    JOBS,
    CANCEL,
    HEARTBEAT,
    ALERTS,
    ACK,
    CHECKS,
    SILENCES,
    SILENCE,
    UNSILENCE,
]

__all__ = ["COMMANDS"]
