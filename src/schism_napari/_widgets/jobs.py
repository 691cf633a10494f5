"""Background actions of a viewer's session: one evented run state and one way to start a worker.

Training, prediction and folder scans all run in a napari thread worker. Before, each widget made
its own worker, connected its own callbacks and inferred "busy" from ``worker is not None``; a
widget closed mid-run lost the run. A :class:`Job` belongs to the per-viewer session instead: it
holds the worker, the stop token, the state (idle / running / stopping / done / failed /
cancelled, as careamics-napari's ``TrainingStatus``) and the events of the current run, so a dock
opened again later shows the same progress and curves and can still stop it. A new action
(evaluate, export) is one more ``Job``, not one more copy of the lifecycle.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from psygnal import Signal

from ..errors import Cancelled
from ..events import StopToken
from .relay import EventRelay


class RunState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def busy(self) -> bool:
        return self in (RunState.RUNNING, RunState.STOPPING)


class Job:
    """One kind of background action of a session (training, prediction, scan), one run at a time.

    ``state_changed`` and ``event`` are psygnal signals emitted in the GUI thread; ``relay`` is the
    Qt bridge the worker's core callback goes through (``relay.finished`` fires once the run's
    result or error has been taken in: what tests and scripts wait for). ``history`` keeps
    ``(arrival time, event)`` of the current run so a widget created mid-run can replay it.
    """

    state_changed = Signal(object)  # RunState
    event = Signal(object)  # a core event, in the GUI thread

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.state = RunState.IDLE
        self.worker: Any = None
        self.stop_token: StopToken | None = None
        self.history: list[tuple[float, Any]] = []
        self.info: dict[str, Any] = {}  # what the starting widget wants to remember (metrics, layers)
        self.result: Any = None
        self.error: BaseException | None = None
        self._run_handler: Callable[[Any], None] | None = None
        self._pending = RunState.DONE
        self._holds = 0  # results still being taken in over several event-loop turns
        self.relay = EventRelay()
        self.relay.event.connect(self._on_event)

    @property
    def busy(self) -> bool:
        return self.state.busy

    def start(
        self,
        function: Callable[..., Any],
        *args: Any,
        on_returned: Callable[[Any], None] | None = None,
        on_errored: Callable[[BaseException], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        info: dict[str, Any] | None = None,
        control: bool = False,
        **kwargs: Any,
    ) -> bool:
        """Run ``function(*args, **kwargs)`` in a worker; False (and nothing started) while busy.

        With ``control`` the function also gets ``callback=`` (core events, thread-safe) and
        ``stop=`` (this run's :class:`StopToken`). ``on_returned``/``on_errored`` run in the GUI
        thread before the state settles, so code following the state sees their effects (the
        session's new model, say); ``on_event`` sees this run's events, with or without a widget.
        """
        from napari.qt.threading import create_worker

        if self.busy:
            return False
        self.stop_token = StopToken()
        self.history = []
        self.info = dict(info or {})
        self.result = self.error = None
        if control:
            kwargs.update(callback=self.relay.emit, stop=self.stop_token)
        self._run_handler = on_event
        # napari's task list keeps every worker it has seen for the viewer's life (its cancel
        # button), and a worker keeps its function's arguments and the slots connected to it: the
        # run's data, masks and models, one set per Train or Predict. So the worker gets a call that
        # forgets its arguments once it has them, and slots that forget their handlers at the end.
        payload: list[Any] = [function, args, kwargs]
        handlers: dict[str, Callable[[Any], None] | None] = {"returned": on_returned, "errored": on_errored}

        def run() -> Any:
            call, call_args, call_kwargs = payload
            payload.clear()
            return call(*call_args, **call_kwargs)

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda value: self._returned(value, handlers.get("returned")))
        worker.errored.connect(lambda error: self._errored(error, handlers.get("errored")))
        worker.finished.connect(handlers.clear)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._set_state(RunState.RUNNING)
        worker.start()
        return True

    def stop(self) -> None:
        """Ask the run to end at its next check (after the current batch or tile)."""
        if self.busy and self.stop_token is not None:
            self.stop_token.request()
            self._set_state(RunState.STOPPING)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until the worker thread has ended (closing the viewer), pumping no events."""
        if self.worker is None:
            return
        deadline = time.monotonic() + timeout
        while self.worker is not None and time.monotonic() < deadline:
            from qtpy.QtWidgets import QApplication

            QApplication.processEvents()
            time.sleep(0.01)

    # ---- in the GUI thread -----------------------------------------------------------------

    def _on_event(self, value: Any) -> None:
        self.history.append((time.perf_counter(), value))
        if self._run_handler is not None:
            self._run_handler(value)
        self.event.emit(value)

    def _returned(self, value: Any, handler: Callable[[Any], None] | None) -> None:
        self.result = value
        stopped = self.stop_token is not None and self.stop_token.requested
        self._pending = RunState.CANCELLED if stopped else RunState.DONE
        if handler is not None:
            handler(value)

    def _errored(self, error: BaseException, handler: Callable[[BaseException], None] | None) -> None:
        self.error = error
        self._pending = RunState.CANCELLED if isinstance(error, Cancelled) else RunState.FAILED
        if handler is not None:
            handler(error)

    def settle_later(self) -> Callable[[], None]:
        """For an ``on_returned`` handler that takes its result in over several event-loop turns
        (new layers, see :mod:`.turns`): the run stays busy, and its final state and
        ``relay.finished`` wait, until the returned function has been called (once)."""
        self._holds += 1
        held = True

        def settle() -> None:
            nonlocal held
            if not held:
                return
            held = False
            self._holds -= 1
            if not self._holds and self.worker is None:
                self._settle()

        return settle

    def _finished(self) -> None:
        self.worker = None
        self._run_handler = None
        if not self._holds:
            self._settle()

    def _settle(self) -> None:
        self._set_state(self._pending)
        self._pending = RunState.DONE
        self.relay.finished.emit()

    def _set_state(self, state: RunState) -> None:
        self.state = state
        self.state_changed.emit(state)


def follow(native: Any, signal: Any, slot: Callable[..., Any]) -> None:
    """Connect ``slot`` to a session signal for as long as the Qt widget ``native`` is in use.

    Widgets come and go (a closed dock, a reopened one) while the session and its jobs stay; a
    destroyed widget must not be called again, nor one whose dock was closed: napari only takes a
    closed dock out of the window, and while Python still holds it, it would go on following the
    session beside the reopened one (each training message shown twice). So a dock collects the
    follows its widgets make (:func:`collect_follows`) and ends them when it is closed.
    """
    signal.connect(slot)

    connected = True

    def _disconnect(*_: Any) -> None:
        nonlocal connected
        if connected:  # once: a closed dock's widgets are released, then destroyed
            connected = False
            with contextlib.suppress(ValueError, RuntimeError, TypeError):  # Qt's signals raise TypeError
                signal.disconnect(slot)

    native.destroyed.connect(_disconnect)
    if _COLLECTING:
        _COLLECTING[-1].append(_disconnect)


_COLLECTING: list[list[Callable[..., None]]] = []  # the lists that follow() adds its disconnections to


@contextlib.contextmanager
def collect_follows() -> Iterator[list[Callable[..., None]]]:
    """The disconnections of every :func:`follow` made inside the block (a dock building its tabs):
    calling them all stops those widgets following the session."""
    collected: list[Callable[..., None]] = []
    _COLLECTING.append(collected)
    try:
        yield collected
    finally:
        _COLLECTING.pop()


class FollowsJob:
    """A widget whose work runs in one of the session's jobs (``self.job``): ``relay`` and ``worker``
    point at that job, so tests and scripts wait on ``widget.relay.finished`` whichever widget it is."""

    job: Job

    @property
    def relay(self) -> EventRelay:
        """The job's Qt bridge: ``relay.finished`` fires once the job's result has been taken in."""
        return self.job.relay

    @property
    def worker(self) -> Any:
        return self.job.worker
