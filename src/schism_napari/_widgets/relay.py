"""Carrying core events from a worker thread into the Qt main thread."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Signal

from ..errors import SchismError


class EventRelay(QObject):
    """``relay.emit`` is a thread-safe core callback; ``relay.event`` fires in the GUI thread.

    ``finished`` fires in the GUI thread once a widget's worker has ended and the widget has
    taken in its result (or error): what tests and scripts wait for.
    """

    event = Signal(object)
    finished = Signal()

    def emit(self, value: Any) -> None:
        self.event.emit(value)


def describe(error: BaseException) -> str:
    """A worker's error for a notification: user errors as they are, others with their type."""
    return str(error) if isinstance(error, SchismError) else f"{type(error).__name__}: {error}"
