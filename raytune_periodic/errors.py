"""Errors users see. Each renders as one line naming the bad field."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the offending field.

    `field` is a dotted path such as ``methods.PD.controller.ranges.dropout``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class DivergedError(RuntimeError):
    """A training loss became NaN or infinite; the run ends with status ``diverged``."""
