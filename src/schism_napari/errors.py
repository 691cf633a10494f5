"""User-facing errors: one clear line naming the file, key or value at fault."""

from __future__ import annotations

import difflib


class SchismError(Exception):
    """An error caused by the user's input (file, config, data); shown without a traceback."""


class ConfigError(SchismError):
    """A configuration value that cannot be used; names the section, key, value and what is allowed."""

    def __init__(
        self,
        section: str,
        key: str | None,
        value: object,
        allowed: str,
        source: str | None = None,
    ) -> None:
        where = f"[{section}]" + (f" {key}" if key else "")
        prefix = f"{source}: " if source else ""
        shown = "" if value is None and key is None else f" = {value!r}"
        super().__init__(f"{prefix}{where}{shown}: {allowed}")
        self.section, self.key, self.value, self.allowed, self.source = (
            section,
            key,
            value,
            allowed,
            source,
        )


class DataError(SchismError):
    """Unusable training or prediction data; the message names the file."""


class Cancelled(SchismError):
    """Raised when the user asks a prediction to stop (training stops by returning instead)."""


def allowed_values(choices: tuple[str, ...], given: str) -> str:
    """``did you mean 'x'? allowed: a, b, c``: the tail of a one-line error about a named choice."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(given).lower(), list(lowered), n=1, cutoff=0.6)
    hint = f"did you mean {lowered[close[0]]!r}? " if close else ""
    return f"{hint}allowed: {', '.join(choices)}"
