"""How bad a reading is: ok, warn or critical, for queue figures and checks alike."""

from __future__ import annotations

import enum


class Severity(enum.IntEnum):
    OK = 0
    WARN = 1
    CRITICAL = 2

    @property
    def word(self) -> str:
        """For tables of figures: upper case marks what needs attention, as /health does."""
        return _WORDS[self]

    @property
    def label(self) -> str:
        """The ``severity`` label of an alert, as Prometheus rules spell it."""
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Severity:
        """The severity a label names; an unknown one counts as critical."""
        return _BY_LABEL.get(label, cls.CRITICAL)


_WORDS = {Severity.OK: "ok", Severity.WARN: "WARN", Severity.CRITICAL: "CRIT"}
_LABELS = {Severity.OK: "ok", Severity.WARN: "warning", Severity.CRITICAL: "critical"}
_BY_LABEL = {label: severity for severity, label in _LABELS.items()}


def above(value: float, warn: float, critical: float) -> Severity:
    """Higher is worse: ``warn`` above ``warn``, ``critical`` above ``critical``."""
    if value > critical:
        return Severity.CRITICAL
    return Severity.WARN if value > warn else Severity.OK


def below(value: float, warn: float, critical: float) -> Severity:
    """Lower is worse: ``warn`` below ``warn``, ``critical`` at or below ``critical``."""
    if value <= critical:
        return Severity.CRITICAL
    return Severity.WARN if value < warn else Severity.OK
