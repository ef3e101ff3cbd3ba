"""A runbook with its arguments checked and every step's values filled in: what is shown
before it runs (dry run, approval request) and exactly what then runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from msgspec import Struct

from bot.features.actions.prepared import PreparedAction
from bot.features.runbooks.config import PLACEHOLDER, RunbookConfig, Step
from bot.kernel.durations import format_duration


class PlannedStep(Struct, frozen=True):
    """One step, resolved. ``prepared``: an action step's checked action."""

    number: str  # "2" for steps, "on failure 1" for on_failure steps
    step: Step
    values: dict[str, str]  # the step's templates filled in (an action's arguments)
    prepared: PreparedAction | None = None

    def describe(self) -> str:
        step = self.step
        if self.prepared is not None:
            return f"run {self.prepared.describe()}"
        if step.wait is not None:
            wait = step.wait
            return (
                f"wait until {wait.health} is {wait.state} (within {format_duration(wait.within)})"
            )
        if step.verify is not None:
            verify = step.verify
            if verify.version is not None:
                return f"verify /version {verify.version} reports {self.values['equals']}"
            return f"verify check {verify.check} is OK"
        assert step.post is not None
        return f"post to {', '.join(step.post.channels)}: {self.values['text']}"


class Plan(Struct, frozen=True):
    runbook: RunbookConfig
    values: dict[str, str]  # the runbook's checked arguments
    steps: tuple[PlannedStep, ...]
    on_failure: tuple[PlannedStep, ...]

    def describe(self) -> str:
        """``rollback tag=v1.2``, for titles and the audit trail."""
        parts = [f"{name}={shlex.quote(value)}" for name, value in self.values.items()]
        return " ".join([self.runbook.name, *parts])

    def lines(self) -> tuple[str, ...]:
        """The numbered plan; an approval is bound to exactly these lines."""
        return tuple(f"{s.number}. {s.describe()}" for s in (*self.steps, *self.on_failure))


def fill(template: str, values: Mapping[str, str]) -> str:
    """One pass: a value is never itself searched for placeholders."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def step_values(step: Step, values: Mapping[str, str]) -> dict[str, str]:
    if step.action is not None:
        return {name: fill(template, values) for name, template in step.args.items()}
    if step.verify is not None and step.verify.equals is not None:
        return {"equals": fill(step.verify.equals, values)}
    if step.post is not None:
        # Built-in placeholders ({failure}, {request_id}) are filled when it is posted.
        return {"text": fill(step.post.text, values)}
    return {}
