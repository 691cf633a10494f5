"""The time budget of a training run: ``[Training] time_budget``, in minutes.

Why a module of its own: a budget promises that the run ends in time on whatever machine runs it,
so the steps an epoch holds cannot come from the INI; they are bought with measured time. Before
the first epoch the Trainer times a few real training steps (:meth:`TimeBudget.measure_step`), one
validation pass and one save of the weights (:meth:`TimeBudget.measure_save`) on this device, and
:meth:`TimeBudget.fit` turns those timings into epochs and steps per epoch. During the run
:meth:`TimeBudget.spent` ends it early (keeping the best weights) on a machine that slowed down.
The arithmetic and the measuring live here; the Trainer supplies the step and the validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runs import save_weights
from .distributed import Distributed

# Share kept in reserve for a machine that slows down, seconds for the final steps (best weights,
# plots), for each epoch's bookkeeping besides validation and saving, and the fewest steps an
# epoch is worth.
BUDGET_RESERVE = 0.05
FINISH_SECONDS = 2.0
EPOCH_OVERHEAD_SECONDS = 0.3
MIN_STEPS_PER_EPOCH = 4
# An epoch ends with a validation pass and writes up to ~5 copies of the weights (best loss, best
# metrics, the checkpoint with the optimizer's two moments). On a CPU that is seconds: a budgeted run
# spends at most this share of its time on epoch ends, so short runs validate less often and the
# steps, not the bookkeeping, fill the budget.
EPOCH_END_SHARE = 0.1
WEIGHT_COPIES_PER_EPOCH = 5
PROBE_STEPS = 2  # timed steps after one warm-up step (on a CPU, the last one with a single thread)
PROBE_LR_DIVISOR = 25  # the probe steps run at OneCycleLR's starting rate

Batches = Iterable[tuple[np.ndarray, np.ndarray]]


class TimeBudget:
    """The clock of one run, started when the run starts; ``minutes`` None is no budget.

    Under torchrun every process measures its own times, so the decisions (``spent``, ``fit``)
    are agreed over ``dist``: the run ends when any process is late, and all keep to the fewest
    epochs and steps any of them can afford.
    """

    def __init__(self, minutes: float | None, device: torch.device, dist: Distributed | None = None):
        self.minutes = minutes
        self.device = device
        self.dist = dist
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        """True (on every process) once the budget is used up; never without a budget."""
        if self.minutes is None:
            return False
        late = self.elapsed() > self.minutes * 60
        return late if self.dist is None else self.dist.any(late, self.device)

    @staticmethod
    def epoch_end_seconds(validation_seconds: float, save_seconds: float) -> float:
        """An epoch's end: one validation pass, the weight copies it writes, its bookkeeping."""
        return validation_seconds + WEIGHT_COPIES_PER_EPOCH * save_seconds + EPOCH_OVERHEAD_SECONDS

    def fit(self, step_seconds: float, epoch_end_seconds: float, max_epochs: int) -> tuple[int, int]:
        """Epochs (at most ``max_epochs``) and steps per epoch that fill what is left of the budget,
        epoch ends taking at most ``EPOCH_END_SHARE`` of it unless epochs would get too short."""
        assert self.minutes is not None, "fit needs a budget"
        left = self.minutes * 60 * (1 - BUDGET_RESERVE) - self.elapsed() - FINISH_SECONDS
        epochs = min(max_epochs, max(1, int(EPOCH_END_SHARE * left // epoch_end_seconds)))
        per_epoch = left / epochs - epoch_end_seconds
        if per_epoch < MIN_STEPS_PER_EPOCH * step_seconds:  # too short for that many epochs: fewer, longer ones
            epochs = max(1, int(left // (epoch_end_seconds + MIN_STEPS_PER_EPOCH * step_seconds)))
            per_epoch = left / epochs - epoch_end_seconds
        if self.dist is not None:  # every process must run the same epochs (their timings differ)
            epochs = self.dist.minimum(epochs, self.device)
            per_epoch = left / epochs - epoch_end_seconds
        steps = max(1, int(per_epoch // step_seconds))
        if self.dist is not None:
            steps = self.dist.minimum(steps, self.device)
        return epochs, steps

    def measure_step(
        self,
        step: Callable[[np.ndarray, np.ndarray, int], float],
        batches: Batches,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        report: Callable[[str], None],
    ) -> float:
        """Seconds per training step, from ``PROBE_STEPS + 1`` real steps (``step(images, masks,
        number)`` on ``batches``) at a low learning rate: a warm-up that is kept, since on a slow
        machine these steps are a large part of the budget. The random states are put back, so crops
        and augmentations afterwards are those of a run without the probe. On a CPU the last step
        runs on one thread, and the faster thread count stays set for the run."""
        global_rng, generator_rng = torch.get_rng_state(), generator.get_state()
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] / PROBE_LR_DIVISOR
        threads = torch.get_num_threads()
        # on a CPU shared with other processes one thread can be several times faster than all
        # cores waiting on each other: the last probe step tries it, and the faster count stays
        single = self.device.type == "cpu" and threads > 1
        times: dict[int, list[float]] = {threads: [], 1: []}
        for number, (images, masks) in enumerate(batches):
            count = 1 if single and number == PROBE_STEPS else threads
            torch.set_num_threads(count)
            started = time.perf_counter()
            step(images, masks, number)
            if number > 0:  # the first step warms up
                times[count].append(time.perf_counter() - started)
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        torch.set_rng_state(global_rng)
        generator.set_state(generator_rng)
        best = min((count for count in times if times[count]), key=lambda count: float(np.median(times[count])))
        torch.set_num_threads(best)
        if best != threads:
            report(f"training with 1 thread: faster than {threads} on this busy CPU")
        return float(np.median(times[best]))

    def measure_save(self, model: nn.Module, folder: Path | None) -> float:
        """Seconds to write the model's weights once into ``folder`` (a probe file, removed); 0 for a
        process that writes nothing (``folder`` None)."""
        if folder is None:
            return 0.0
        probe = folder / ".save_probe.pth"
        started = time.perf_counter()
        try:
            save_weights(probe, model.state_dict())
        finally:
            probe.unlink(missing_ok=True)
        return time.perf_counter() - started
