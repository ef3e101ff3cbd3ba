"""Every chat command, in one visible list. Add a module, then add its SPEC here."""

from typing import Any

from bot.command import CommandSpec
from commands.audit import SPEC as AUDIT
from commands.health import SPEC as HEALTH
from commands.help import SPEC as HELP
from commands.policy import SPEC as POLICY
from commands.status import SPEC as STATUS
from commands.version import SPEC as VERSION
from commands.whoami import SPEC as WHOAMI

COMMANDS: list[CommandSpec[Any]] = [HELP, WHOAMI, HEALTH, VERSION, STATUS, POLICY, AUDIT]

__all__ = ["COMMANDS"]
