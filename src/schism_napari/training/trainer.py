"""The training loop, shared by the CLI and the napari Training widget.

It reports through one callback (events in :mod:`schism_napari.events`) and polls a
:class:`StopToken` after every batch: a stop ends the current batch and returns normally,
keeping the best checkpoints and the last completed epoch's checkpoint (``--resume`` repeats
the interrupted epoch). Stopped before any epoch ended, the weights learned so far are
validated and kept as ``model_best_loss.pth``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, SchismConfig, canonical_metric
from ..data.classes import default_class_names
from ..data.crops import TrainingCrops, fixed_crops
from ..data.dataset import SegmentationData
from ..data.io import IGNORE
from ..data.normalization import write_stats_file
from ..data.splits import Split, make_split, read_split, write_split
from ..errors import SchismError
from ..evaluation.metrics import ConfusionMatrix
from ..events import (
    BatchEnded,
    EpochEnded,
    Message,
    ProgressCallback,
    StopToken,
    TrainingFinished,
    TrainingStarted,
    ignore_events,
)
from ..models import build_model
from ..models.probabilities import predicted_classes, probabilities_from_logits
from ..models.two_stage import is_two_stage_state
from ..plumbing.atomic import DiskFullError
from ..plumbing.devices import select_device
from ..runs import (
    BEST_LOSS,
    CONFUSION,
    CURVES,
    HISTORY,
    HYPERPARAMETERS,
    METRICS_CSV,
    claimed_run_dir,
    read_run_info,
    write_run_info,
)
from .batches import augment, to_device
from .budget import PROBE_STEPS, TimeBudget
from .checkpoints import Checkpoints, TrainingState
from .distributed import Distributed, from_environment
from .losses import build_loss, class_weights_from_counts
from .optimizers import build_optimizer, build_scheduler
from .planning import Plan

if TYPE_CHECKING:
    from ..forest.classifier import PixelClassifier

PER_BATCH_SCHEDULERS = ("OneCycleLR", "CyclicLR")  # always per batch in earlier versions; kept for importers


@dataclass
class TrainingParts:
    """The objects one run trains with (built once by ``Trainer.on_train_start``, passed to each hook)."""

    model: nn.Module
    network: nn.Module  # what the training steps call: DDP averages gradients across processes
    crops: TrainingCrops
    val_images: np.ndarray
    val_masks: np.ndarray
    loss_function: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    rng: np.random.Generator
    generator: torch.Generator
    split: Split
    channels_last: bool
    last_matrix: ConfusionMatrix | None = None


@dataclass
class TrainingResult:
    run_dir: Path
    epochs_completed: int
    stopped: bool
    reason: str
    best: dict[str, float]
    history: list[dict[str, Any]]
    model: nn.Module  # the best-validation-loss weights, in eval mode
    config: SchismConfig  # as trained (in_channels resolved)
    split: Split = field(repr=False)
    stage_one: Any = None  # stages.StageOne when the network is stage 2 of a two-stage model


class Trainer:
    """Trains one model on one dataset into one run folder; the CLI and the napari widget share it.

    ``run`` is a short loop of named, public hooks (nnU-Net's ``run_training`` has the same shape),
    called in this order:

    1. ``on_train_start()`` -> ``(parts, state)``: seeds, split, model, validation crops, loss,
       optimizer; with ``time_budget`` and no steps_per_epoch, the steps sized by
       :class:`~.budget.TimeBudget`; training crops, scheduler, the run folder's description; on
       ``resume`` the :class:`~.checkpoints.TrainingState` read back from the last checkpoint;
       then :class:`TrainingStarted`.
    2. For each epoch, ``train_epoch(parts, epoch)``: one ``train_step(...)`` per batch, the stop
       token and the time budget polled after each; then
       ``on_epoch_end(parts, state, epoch, losses, seconds)``: ``validate(parts)``, best weights,
       an epoch scheduler's step, metrics files, the last checkpoint, :class:`EpochEnded`; it
       returns True when early stopping ends the run. A stop by the user skips ``on_epoch_end``
       and calls ``on_stop(parts, state)`` instead.
    3. ``on_train_end(parts, state, stopped, reason)`` -> :class:`TrainingResult`: final plots,
       the best-loss weights back into the model, :class:`TrainingFinished`.

    The weight files are :class:`~.checkpoints.Checkpoints`' (``self.checkpoints``); the clock is
    ``self.budget``.

    An epoch is ``[Training] steps_per_epoch`` optimizer steps, or without it one pass over the
    training images (SCHISM). With ``time_budget`` (minutes) and no steps_per_epoch, the step
    time is measured on the device first and the steps sized so the run ends in time; the run
    also stops (keeping the best weights) when the budget is spent.
    """

    def __init__(
        self,
        config: SchismConfig,
        data: SegmentationData,
        run_dir: Path,
        *,
        split: Split | None = None,
        initial_weights: dict[str, torch.Tensor] | None = None,
        resume: bool = False,
        callback: ProgressCallback = ignore_events,
        stop: StopToken | None = None,
        curves_each_epoch: bool = True,
        distributed: bool = True,
        plan: Plan | None = None,
        forest_positions: Sequence[int] | None = None,
        forest: PixelClassifier | None = None,
    ):
        """``curves_each_epoch=False`` draws learning_curves.png once at the end: the napari dock
        shows the curves live, and rendering in the worker thread holds the GIL for ~70 ms.
        ``distributed`` joins the torch.distributed process group that torchrun describes, if any.
        ``plan`` (from :func:`schism_napari.training.planning.plan_config`) is written to ``plan.json``
        with the steps the time budget gives. ``forest_positions`` makes the model two-stage (see
        :mod:`schism_napari.forest.stages`): a forest fitted on those samples' labels, whose probabilities the
        network reads; its fitting counts in the time budget (``forest``: that forest, fitted already)."""
        self.config = config.copy()
        self.curves_each_epoch = curves_each_epoch
        self.distributed = distributed
        self.config.model.in_channels = data.in_channels
        if data.class_count != self.config.model.class_count:
            raise SchismError(
                f"the data has {data.class_count} classes but [Model] num_classes = {self.config.model.num_classes}"
            )
        self.data = data
        self.run_dir = Path(run_dir)
        self.split = split
        self.initial_weights = initial_weights
        self.resume = resume
        self.callback = callback
        self.stop = stop or StopToken()
        self.device = select_device(self.config.training.device)
        self.dist: Distributed | None = None
        self.plan = plan
        self.forest_positions = None if forest_positions is None else list(forest_positions)
        self.stage_one: Any = None
        self.forest = forest
        self.checkpoints = Checkpoints(self.run_dir)
        self.budget = TimeBudget(self.config.training.time_budget, self.device)  # restarted by on_train_start

    @property
    def use_amp(self) -> bool:
        """Mixed precision applies on CUDA only."""
        return self.config.training.amp and self.device.type == "cuda"

    @property
    def main(self) -> bool:
        """The process that writes the run folder and reports progress (always, without torchrun)."""
        return self.dist is None or self.dist.main

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        """Train (the hooks, in ``_run``) inside this process's share of the work: the torchrun
        process group if any, the run folder claimed, the thread count put back afterwards."""
        self.dist = from_environment() if self.distributed else None
        if self.dist is not None:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
                torch.cuda.set_device(self.device)
            if not self.dist.main:
                self.callback = ignore_events
        self.checkpoints.write = self.main
        threads = torch.get_num_threads()
        try:
            with self._claim():
                return self._run()
        except DiskFullError as error:
            raise error.with_hint(self.checkpoints.disk_full_hint()) from None
        finally:
            torch.set_num_threads(threads)  # the probe may have chosen fewer for this run
            if self.dist is not None:
                self.dist.close()

    def _claim(self) -> contextlib.AbstractContextManager[Any]:
        """The run folder, held for this run (the CLI may hold it already: claims nest in a thread).
        Here, so that every caller (CLI, napari dock, Python) gets it; rank 0 alone writes the folder."""
        return claimed_run_dir(self.run_dir) if self.main else contextlib.nullcontext()

    def _run(self) -> TrainingResult:
        """The hooks in order: start, epochs until done, stopped or out of time, end."""
        parts, state = self.on_train_start()
        cfg = self.config
        stopped, reason = False, "completed"
        for epoch in range(state.epoch + 1, cfg.training.epochs + 1):
            started = time.perf_counter()
            losses, interrupted = self.train_epoch(parts, epoch)
            if interrupted == "stop":
                stopped, reason = True, "stopped by the user"
                self.on_stop(parts, state)
                break
            if self.on_epoch_end(parts, state, epoch, losses, time.perf_counter() - started):
                stopped = True
                reason = f"early stopping: no better validation loss for {state.stale_epochs} epochs"
                break
            if interrupted == "time":  # the planned end, reached early on a machine that slowed down
                reason = f"time budget of {cfg.training.time_budget:g} minutes spent"
                break
        return self.on_train_end(parts, state, stopped, reason)

    # ---- hooks, in the order the run calls them ------------------------------------------------

    def on_train_start(self) -> tuple[TrainingParts, TrainingState]:
        """Start the clock, build the parts (steps planned from the time budget), read the last
        checkpoint back when resuming, report :class:`TrainingStarted`."""
        self.budget = TimeBudget(self.config.training.time_budget, self.device, self.dist)
        parts = self._build()
        state = self._resume(parts) if self.resume else TrainingState()
        state.capture_rng(parts.rng, parts.generator)  # what an epoch starts from, for a resume that repeats it
        world = self.dist.world if self.dist else 1
        self.callback(
            TrainingStarted(
                self.run_dir,
                str(self.device) if world == 1 else f"{self.device} x {world} processes",
                state.epoch + 1,
                self.config.training.epochs,
                len(parts.crops),
                len(parts.split.train),
                len(parts.split.val),
            )
        )
        return parts, state

    def train_epoch(self, parts: TrainingParts, epoch: int) -> tuple[list[float], str | None]:
        """One epoch of optimizer steps; returns the batch losses and "stop"/"time" when cut short."""
        parts.model.train()
        losses: list[float] = []
        batches = len(parts.crops)
        for number, (images, masks) in enumerate(parts.crops, start=1):
            losses.append(self.train_step(parts, images, masks, epoch, number))
            self.callback(BatchEnded(epoch, number, batches, losses[-1]))
            if self._stop_requested():
                return losses, "stop"
            if self.budget.spent():
                return losses, "time"
        return losses, None

    def train_step(self, parts: TrainingParts, images: np.ndarray, masks: np.ndarray, epoch: int, number: int) -> float:
        """One optimizer step on one batch of crops; returns its loss."""
        cfg = self.config
        x, y = to_device(images, masks, self.device, cfg.data.img_res)
        if cfg.data.augment:
            x, y = augment(x, y, parts.generator, cfg.data.intensity_jitter)
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self._target(y)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss = parts.loss_function(parts.network(x), y)
        if not torch.isfinite(loss):
            raise SchismError(
                f"the training loss became {loss.item()} at epoch {epoch}, batch {number}; "
                "lower [Optimizer] lr or check the data"
            )
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if cfg.training.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)
            nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.training.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        if parts.scheduler is not None and cfg.scheduler.per_batch():
            parts.scheduler.step()
        return float(loss.item())

    @torch.inference_mode()
    def validate(self, parts: TrainingParts) -> tuple[float, ConfusionMatrix]:
        """The model on the fixed validation crops: the mean loss over labelled pixels, and the
        confusion matrix the scores come from."""
        cfg = self.config
        model, images, masks = parts.model, parts.val_images, parts.val_masks
        model.eval()
        matrix = ConfusionMatrix(
            cfg.model.class_count,
            average_precision=any(canonical_metric(m) == "AveragePrecision" for m in cfg.training.metrics),
        )
        weighted_loss, labelled = 0.0, 0
        for start in range(0, len(images), cfg.training.batch_size):
            x, y = to_device(
                images[start : start + cfg.training.batch_size],
                masks[start : start + cfg.training.batch_size],
                self.device,
                cfg.data.img_res,
                channels_last=self.device.type == "cpu",
            )
            y = self._target(y)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = model(x)
            logits = logits.float()
            count = int((y != IGNORE).sum())
            if count:
                weighted_loss += float(parts.loss_function(logits, y)) * count
                labelled += count
            probabilities = probabilities_from_logits(logits)
            matrix.update(y, predicted_classes(probabilities, cfg.inference.threshold), probabilities)
        return (weighted_loss / labelled if labelled else math.nan), matrix

    def on_epoch_end(
        self, parts: TrainingParts, state: TrainingState, epoch: int, losses: list[float], seconds: float
    ) -> bool:
        """Validate, keep the best weights, log, save the checkpoint; True when early stopping ends the run."""
        from ..plumbing.resources import recheck_threads

        recheck_threads()  # neighbours come and go during a long run: an automatic thread count follows
        cfg = self.config
        metrics = cfg.training.score_metrics()
        val_loss, matrix = self.validate(parts)
        parts.last_matrix = matrix
        scores = {name: matrix.mean(name) for name in metrics}
        per_class = {name: matrix.class_scores(name) for name in metrics}
        improved = self._record_best(state, val_loss, scores)
        self.checkpoints.save_best(improved, parts.model)
        lr = parts.optimizer.param_groups[0]["lr"]
        self._step_epoch_scheduler(parts, val_loss)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_loss": val_loss,
            "lr": lr,
            "seconds": seconds,
            **scores,
            **{f"{name}_class{k}": v for name, values in per_class.items() for k, v in enumerate(values)},
        }
        state.history.append(record)
        state.epoch = epoch
        if self.main:
            self._write_epoch_outputs(state.history, metrics, curves=self.curves_each_epoch)
        state.capture_rng(parts.rng, parts.generator)
        scaler = parts.scaler if self.use_amp else None
        self.checkpoints.save_last(state, parts.model, parts.optimizer, parts.scheduler, scaler)
        self.callback(
            EpochEnded(
                epoch,
                cfg.training.epochs,
                record["train_loss"],
                val_loss,
                scores,
                per_class,
                lr,
                seconds,
                tuple(improved),
            )
        )
        return bool(cfg.training.early_stopping and state.stale_epochs >= cfg.training.effective_patience())

    def on_stop(self, parts: TrainingParts, state: TrainingState) -> None:
        """Stopped by the user before any epoch ended: keep what was learned as the best so far."""
        if BEST_LOSS not in state.best:
            val_loss, _ = self.validate(parts)
            state.best[BEST_LOSS] = val_loss
            self.checkpoints.save_best([BEST_LOSS], parts.model)

    def on_train_end(self, parts: TrainingParts, state: TrainingState, stopped: bool, reason: str) -> TrainingResult:
        """Final plots, the best-loss weights back into the model, the finished event."""
        if self.main:
            self._final_plots(parts, state)
        if self.dist is not None:
            self.dist.barrier()  # the main process has written the best weights
        self.checkpoints.load_best_loss(parts.model)
        parts.model.eval()
        self.callback(TrainingFinished(self.run_dir, state.epoch, stopped, reason, dict(state.best)))
        return TrainingResult(
            self.run_dir,
            state.epoch,
            stopped,
            reason,
            dict(state.best),
            state.history,
            parts.model,
            self.config,
            parts.split,
            self.stage_one,
        )

    # ---- building the parts --------------------------------------------------------------------

    def _build(self) -> TrainingParts:
        """Seeds, split, model, crops, loss, optimizer and scheduler; plans the steps from the time budget."""
        cfg = self.config
        seed, rng, crop_rng, generator = self._random_sources()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        split = self._prepare_split()
        if not split.train:
            raise SchismError("no training images: the split left none (check num_samples and val_split)")
        model = self._build_network(split)
        val_images, val_masks = self._validation_crops(split, seed)
        loss_function = build_loss(cfg.loss, cfg.model, self._class_weights(split)).to(self.device)
        parts = TrainingParts(
            model=model,
            network=model,
            crops=None,  # type: ignore[arg-type]  # built below, once the steps are planned
            val_images=val_images,
            val_masks=val_masks,
            loss_function=loss_function,
            optimizer=build_optimizer(cfg, model),
            scheduler=None,
            scaler=torch.amp.GradScaler("cuda", enabled=self.use_amp),
            rng=rng,
            generator=generator,
            split=split,
            channels_last=self.device.type == "cpu",
        )
        if cfg.training.time_budget is not None and cfg.training.steps_per_epoch is None and not self.resume:
            self._plan_steps(parts)
        parts.crops = self._training_crops(split, crop_rng, rng)
        parts.scheduler = build_scheduler(cfg, parts.optimizer, len(parts.crops))
        if self.main:
            self._write_run_description()
        if self.dist is not None:
            parts.network = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return parts

    def _rank_world(self) -> tuple[int, int]:
        return (self.dist.rank, self.dist.world) if self.dist else (0, 1)

    def _random_sources(self) -> tuple[int | None, np.random.Generator, np.random.Generator, torch.Generator]:
        """The seed (shared by all processes), the numpy generator that orders crops, the one that
        places this process's crops, and the torch generator of augmentations."""
        seed = self.config.training.seed
        if seed is None and self.dist is not None:
            seed = self.dist.shared_seed(self.device)  # every process must split and shuffle alike
        if seed is not None:
            torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        rank, world = self._rank_world()
        crop_rng = rng if world == 1 else np.random.default_rng([seed or 0, rank])  # world > 1: seed is shared
        generator = torch.Generator().manual_seed((seed if seed is not None else int(rng.integers(2**31))) + rank)
        return seed, rng, crop_rng, generator

    def _prepare_split(self) -> Split:
        if self.resume:
            return read_split(self.run_dir, self.data)
        if self.split is None:
            t, d = self.config.training, self.config.data
            self.split = make_split(len(self.data.samples), d.num_samples, t.val_split, t.seed)
        if self.main:
            write_split(self.run_dir, self.data, self.split, overwrite=True)
        return self.split

    def _build_network(self, split: Split) -> nn.Module:
        """The model on the device, its input size checked, with the starting weights if any."""
        model = self._build_model(split).to(self.device)
        if self.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._check_input_size(model)
        if self.initial_weights is not None:
            try:
                model.load_state_dict(self.initial_weights)
            except RuntimeError as error:
                raise SchismError(
                    f"the starting weights do not fit this model ({str(error).splitlines()[0]})"
                ) from None
        return model

    def _build_model(self, split: Split) -> nn.Module:
        """The network; with ``forest_positions``, stage 2 of a two-stage model, whose data (the images
        with the forest's probabilities) replaces ``self.data`` here, inside the time budget. Starting
        weights of a two-stage model keep two stages, with the training images' labels for stage 1; a
        resumed run keeps the stages it started with."""
        cfg = self.config
        two_stage = is_two_stage_state(self.initial_weights)
        if self.resume:
            two_stage = bool(read_run_info(self.run_dir).get("stage_one"))
            if not two_stage:
                self.forest_positions = None
        if self.forest_positions is None and two_stage:
            self.forest_positions = list(split.train)
        if self.forest_positions is None or not self._two_stage_possible():
            return build_model(cfg.model, self.data.in_channels, source=cfg.source)
        from ..forest.stages import stage_two_data
        from ..models.two_stage import ForestPrior

        self.data, self.stage_one = stage_two_data(
            self.data, self.forest_positions, report=lambda text: self.callback(Message(text)), forest=self.forest
        )
        network = build_model(cfg.model, self.data.in_channels, source=cfg.source)
        return ForestPrior(network, self.stage_one.image_channels, self.stage_one.classes)

    def _two_stage_possible(self) -> bool:
        """Stage 2 takes C + K channels: not SCHISM's gray-or-RGB networks, not weights of one stage,
        not data too large to copy with K more channels."""
        from ..forest.stages import fits_in_memory
        from ..models import SCHISM_ARCHITECTURES

        if self.config.model.model_type in SCHISM_ARCHITECTURES:
            return False
        if self.initial_weights is not None and not is_two_stage_state(self.initial_weights):
            return False
        if self.dist is not None or not fits_in_memory(self.data):
            return False
        masks = [self.data.samples[p].mask for p in self.forest_positions or ()]
        return any(mask is not None and bool((mask != IGNORE).any()) for mask in masks)

    def _check_input_size(self, model: nn.Module) -> None:
        """One forward pass at img_res before training, so an input the architecture cannot take
        (too small for PAN's pyramid, say) is a clear error instead of a crash deep inside smp."""
        size = self.config.data.img_res
        probe = torch.zeros(2, self.data.in_channels, size, size, device=self.device)
        model.eval()
        try:
            with torch.no_grad():
                model(probe)
        except RuntimeError as error:
            raise ConfigError(
                "Data",
                "img_res",
                size,
                f"{self.config.model.model_type} cannot process {size} px inputs ({str(error).splitlines()[0]}); "
                "use a larger img_res (and crop_size)",
                self.config.source,
            ) from None

    def _class_weights(self, split: Split) -> torch.Tensor | None:
        if not self.config.loss.weights:
            return None
        counts = self.data.class_pixel_counts(split.train)  # ignore_background: unlabeled when read
        weights = class_weights_from_counts(counts)
        self.callback(Message("class weights: " + ", ".join(f"{w:.3g}" for w in weights.tolist())))
        return weights.to(self.device)

    def _validation_crops(self, split: Split, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The fixed crops every epoch validates on (the training images' when none are held out)."""
        cfg = self.config
        val_positions = split.val
        if not val_positions:
            val_positions = split.train
            self.callback(Message("no validation images: validating on the training images", "warning"))
        return fixed_crops(
            self.data, val_positions, cfg.data.crop_size, cfg.data.crops_per_image, seed, cfg.data.class_crops
        )

    def _training_crops(self, split: Split, crop_rng: np.random.Generator, rng: np.random.Generator) -> TrainingCrops:
        """Each epoch's batches of random crops (this process's share of them under torchrun)."""
        cfg = self.config
        return TrainingCrops(
            self.data,
            split.train,
            cfg.data.crop_size,
            cfg.data.crops_per_image,
            cfg.training.batch_size,
            crop_rng,
            shard=self._rank_world(),
            order_rng=rng,
            steps=cfg.training.steps_per_epoch,
            class_share=cfg.data.class_crops,
        )

    # ---- the time budget -----------------------------------------------------------------------

    def _plan_steps(self, parts: TrainingParts) -> None:
        """Measure a training step, a validation pass and a save on this device, then size the epochs
        to the time budget (:class:`~.budget.TimeBudget`). The probe steps are kept as a short warm-up
        at a low learning rate."""
        cfg = self.config
        budget = self.budget
        parts.model.train()
        step_seconds = budget.measure_step(
            lambda images, masks, number: self.train_step(parts, images, masks, 0, number),
            self._probe_crops(parts.split),
            parts.optimizer,
            parts.generator,
            lambda text: self.callback(Message(text)),
        )
        started = time.perf_counter()
        self.validate(parts)
        val_seconds = time.perf_counter() - started
        save_seconds = budget.measure_save(parts.model, self.run_dir if self.main else None)
        epoch_end = budget.epoch_end_seconds(val_seconds, save_seconds)
        epochs, steps = budget.fit(step_seconds, epoch_end, cfg.training.epochs)
        cfg.training.epochs, cfg.training.steps_per_epoch = epochs, steps
        note = (
            f"measured {step_seconds:.3g} s per step and {epoch_end:.3g} s per epoch end (validation "
            f"{val_seconds:.3g} s) on {self.device}: "
            f"{epochs} epochs of {steps} steps fit {budget.minutes:g} minutes"
        )
        if self.plan is not None:
            self.plan.reasons["Training.steps_per_epoch"] = note
            if epochs != self.plan.config.training.epochs:
                self.plan.reasons["Training.epochs"] = note
        self.callback(Message("time budget: " + note))

    def _probe_crops(self, split: Split) -> TrainingCrops:
        """The batches the step time is measured on: drawn from their own generator, so the run's
        crops are those of a run without the probe."""
        cfg = self.config
        return TrainingCrops(
            self.data,
            split.train,
            cfg.data.crop_size,
            cfg.data.crops_per_image,
            cfg.training.batch_size,
            np.random.default_rng(0),
            steps=PROBE_STEPS + 1,
            class_share=cfg.data.class_crops,
        )

    # ---- checkpoints and the run folder --------------------------------------------------------

    def _resume(self, parts: TrainingParts) -> TrainingState:
        """Restore weights, optimizer, scheduler, scaler and every random state from ``last_checkpoint``."""
        cfg = self.config
        saved = self.checkpoints.load_last()
        state = self.checkpoints.restore(saved, parts.model, parts.optimizer, parts.scaler)
        schedule = saved.get("scheduler")
        if parts.scheduler is not None and schedule is not None:
            if cfg.scheduler.scheduler == "OneCycleLR" and schedule.get("total_steps") != parts.scheduler.total_steps:
                # more epochs than first planned: the remaining steps anneal over the new total
                parts.scheduler = build_scheduler(
                    cfg, parts.optimizer, len(parts.crops), last_epoch=schedule["last_epoch"] - 1
                )
            else:
                parts.scheduler.load_state_dict(schedule)
        state.restore_rng(parts.rng, parts.generator)
        if state.epoch + 1 > cfg.training.epochs:
            raise SchismError(
                f"{self.run_dir}: already trained {state.epoch} of {cfg.training.epochs} epochs; "
                "raise [Training] epochs in its hyperparameters.ini to continue"
            )
        return state

    @staticmethod
    def _record_best(state: TrainingState, val_loss: float, scores: dict[str, float]) -> list[str]:
        """Note the epoch's bests in ``state`` (and the epochs without a better loss); returns the
        names whose best weights this epoch's replace."""
        improved = []
        if val_loss < state.best.get(BEST_LOSS, math.inf):
            state.best[BEST_LOSS] = val_loss
            improved.append(BEST_LOSS)
            state.stale_epochs = 0
        else:
            state.stale_epochs += 1
        for name, value in scores.items():
            if np.isfinite(value) and value > state.best.get(name, -math.inf):
                state.best[name] = value
                improved.append(name)
        return improved

    def _step_epoch_scheduler(self, parts: TrainingParts, val_loss: float) -> None:
        """A scheduler that steps once an epoch (ReduceLROnPlateau on the validation loss); per-batch
        schedulers step in ``train_step``."""
        if parts.scheduler is not None and self.config.scheduler.scheduler == "ReduceLROnPlateau":
            parts.scheduler.step(val_loss)
        elif parts.scheduler is not None and not self.config.scheduler.per_batch():
            parts.scheduler.step()

    def _final_plots(self, parts: TrainingParts, state: TrainingState) -> None:
        """learning_curves.png when it was not drawn each epoch, and the last validation's confusion matrix."""
        cfg = self.config
        if state.history and not self.curves_each_epoch:
            from .plotting import save_learning_curves

            save_learning_curves(self.run_dir / CURVES, state.history, cfg.training.score_metrics())
        if parts.last_matrix is not None and any(
            canonical_metric(m) == "ConfusionMatrix" for m in cfg.training.metrics
        ):
            from .plotting import save_confusion_matrix

            names = self.data.class_names or default_class_names(self.data.class_count)
            save_confusion_matrix(self.run_dir / CONFUSION, parts.last_matrix.matrix.numpy(), names)

    def _write_run_description(self) -> None:
        self.config.to_ini(self.run_dir / HYPERPARAMETERS, overwrite=True)
        if self.plan is not None:
            self.plan.config = self.config
            self.plan.write(self.run_dir)
        used = {name: self.data.normalization(name) for name in self.data.datasets}
        used["default"] = self.data.stats.get("default") or next(iter(used.values()))
        if self.stage_one is not None:  # the image's statistics: the probabilities' are fixed
            used = {name: self.stage_one.image_normalization(value) for name, value in used.items()}
        write_stats_file(self.run_dir / "data_stats.json", used, overwrite=True)
        info: dict[str, Any] = {
            "in_channels": self.config.model.in_channels,
            "class_names": self.data.class_names or default_class_names(self.data.class_count),
            "class_colors": self.data.class_colors,
            "datasets": self.data.datasets,
            "input_dtypes": sorted({s.image.dtype.name for s in self.data.samples}),
        }
        if self.stage_one is not None:
            self.stage_one.save(self.run_dir)
            info["stage_one"] = self.stage_one.describe()
        write_run_info(self.run_dir, info)

    def _write_epoch_outputs(self, history: list[dict[str, Any]], metrics: list[str], *, curves: bool) -> None:
        from ..plumbing.atomic import atomic_write_text
        from .plotting import save_learning_curves

        columns = list(dict.fromkeys(key for record in history for key in record))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.run_dir / METRICS_CSV, buffer.getvalue(), overwrite=True)
        lines = [
            f"Epoch {r['epoch']}: val_loss={r['val_loss']:.6f} "
            + " ".join(f"{m}={r.get(m, math.nan):.6f}" for m in metrics)
            for r in history
        ]
        atomic_write_text(self.run_dir / HISTORY, "\n".join(lines) + "\n", overwrite=True)
        if curves:
            save_learning_curves(self.run_dir / CURVES, history, metrics)

    # ---- small helpers -------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        if self.dist is None:
            return self.stop.requested
        return self.dist.any(self.stop.requested, self.device)  # one process stopping stops all

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return y  # SCHISM's ignore_background (gray 0 = unlabeled) is applied when masks are read
