"""The training loop, shared by the CLI and the napari Training widget.

It reports through one callback (events in :mod:`schism_napari.events`) and polls a
:class:`StopToken` after every batch: a stop ends the current batch and returns normally,
keeping the best checkpoints and the last completed epoch's checkpoint (``--resume`` repeats
the interrupted epoch). Stopped before any epoch ended, the weights learned so far are
validated and kept as ``model_best_loss.pth``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, SchismConfig, canonical_metric
from ..data.crops import TrainingCrops, fixed_crops
from ..data.dataset import SegmentationData
from ..data.io import IGNORE
from ..data.normalization import write_stats_file
from ..data.splits import Split, make_split, read_split, write_split
from ..errors import SchismError
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
from ..runs import (
    BEST_LOSS,
    CONFUSION,
    CURVES,
    HISTORY,
    HYPERPARAMETERS,
    LAST_CHECKPOINT,
    METRICS_CSV,
    best_weights_file,
    default_class_names,
    load_weights,
    save_weights,
    write_run_info,
)
from .batches import augment, to_device
from .distributed import Distributed, from_environment
from .losses import build_loss, class_weights_from_counts
from .metrics import ConfusionMatrix, predicted_classes, probabilities_from_logits

PER_BATCH_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SchismError(f"[Training] device = {name}: CUDA is not available on this machine")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise SchismError(f"[Training] device = {name}: MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


class Trainer:
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
    ):
        """``curves_each_epoch=False`` draws learning_curves.png once at the end: the napari dock
        shows the curves live, and rendering in the worker thread holds the GIL for ~70 ms.
        ``distributed`` joins the torch.distributed process group that torchrun describes, if any."""
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

    # ---- set-up ------------------------------------------------------------------------------

    def _prepare_split(self) -> Split:
        if self.resume:
            return read_split(self.run_dir, self.data)
        if self.split is None:
            t, d = self.config.training, self.config.data
            self.split = make_split(len(self.data.samples), d.num_samples, t.val_split, t.seed)
        if self.main:
            write_split(self.run_dir, self.data, self.split, overwrite=True)
        return self.split

    def _write_run_description(self) -> None:
        self.config.to_ini(self.run_dir / HYPERPARAMETERS, overwrite=True)
        used = {name: self.data.normalization(name) for name in self.data.datasets}
        used["default"] = self.data.stats.get("default") or next(iter(used.values()))
        write_stats_file(self.run_dir / "data_stats.json", used, overwrite=True)
        write_run_info(
            self.run_dir,
            {
                "in_channels": self.data.in_channels,
                "class_names": self.data.class_names or default_class_names(self.data.class_count),
                "class_colors": self.data.class_colors,
                "datasets": self.data.datasets,
                "input_dtypes": sorted({s.image.dtype.name for s in self.data.samples}),
            },
        )

    def _class_weights(self, split: Split) -> torch.Tensor | None:
        if not self.config.loss.weights:
            return None
        counts = self.data.class_pixel_counts(split.train)  # ignore_background: unlabeled when read
        weights = class_weights_from_counts(counts)
        self.callback(Message("class weights: " + ", ".join(f"{w:.3g}" for w in weights.tolist())))
        return weights.to(self.device)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        settings = self.config.optimizer
        cls = getattr(torch.optim, settings.optimizer)
        try:
            return cls(model.parameters(), lr=settings.lr, **settings.kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError("Optimizer", None, None, f"{settings.optimizer}: {error}", self.config.source) from None

    def _scheduler(self, optimizer: torch.optim.Optimizer, batches: int, **overrides: Any) -> Any:
        settings = self.config.scheduler
        if settings.scheduler is None:
            return None
        kwargs = {**settings.kwargs, **overrides}
        lr, epochs = self.config.optimizer.lr, self.config.training.epochs
        name = settings.scheduler
        if name == "OneCycleLR":
            kwargs.setdefault("max_lr", lr)
            if not {"total_steps", "epochs", "steps_per_epoch"} & kwargs.keys():
                kwargs["total_steps"] = epochs * batches
        elif name == "CyclicLR":
            kwargs.setdefault("base_lr", lr / 10)
            kwargs.setdefault("max_lr", lr)
            if "momentum" not in optimizer.defaults:
                kwargs.setdefault("cycle_momentum", False)
        elif name == "CosineAnnealingLR":
            kwargs.setdefault("T_max", epochs)
        elif name == "CosineAnnealingWarmRestarts":
            kwargs.setdefault("T_0", max(1, epochs // 3))
        cls = getattr(torch.optim.lr_scheduler, name)
        try:
            return cls(optimizer, **kwargs)
        except (TypeError, ValueError, KeyError) as error:
            raise ConfigError("Scheduler", None, None, f"{name}: {error}", self.config.source) from None

    def _stop_requested(self) -> bool:
        if self.dist is None:
            return self.stop.requested
        return self.dist.any(self.stop.requested, self.device)  # one process stopping stops all

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        if self.main:
            save_weights(path, state)

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

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return y  # SCHISM's ignore_background (gray 0 = unlabeled) is applied when masks are read

    # ---- loop --------------------------------------------------------------------------------

    @property
    def use_amp(self) -> bool:
        """Mixed precision applies on CUDA only."""
        return self.config.training.amp and self.device.type == "cuda"

    @property
    def main(self) -> bool:
        """The process that writes the run folder and reports progress (always, without torchrun)."""
        return self.dist is None or self.dist.main

    def run(self) -> TrainingResult:
        self.dist = from_environment() if self.distributed else None
        if self.dist is not None:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
                torch.cuda.set_device(self.device)
            if not self.dist.main:
                self.callback = ignore_events
        try:
            return self._run()
        finally:
            if self.dist is not None:
                self.dist.close()

    def _run(self) -> TrainingResult:
        cfg = self.config
        seed = cfg.training.seed
        if seed is None and self.dist is not None:
            seed = self.dist.shared_seed(self.device)  # every process must split and shuffle alike
        if seed is not None:
            torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        rank, world = (self.dist.rank, self.dist.world) if self.dist else (0, 1)
        crop_rng = rng if world == 1 else np.random.default_rng([seed, rank])
        generator = torch.Generator().manual_seed((seed if seed is not None else int(rng.integers(2**31))) + rank)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        split = self._prepare_split()
        if not split.train:
            raise SchismError("no training images: the split left none (check num_samples and val_split)")
        if self.main:
            self._write_run_description()

        model = build_model(cfg.model, self.data.in_channels, source=cfg.source).to(self.device)
        channels_last = self.device.type == "cpu"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._check_input_size(model)
        if self.initial_weights is not None:
            try:
                model.load_state_dict(self.initial_weights)
            except RuntimeError as error:
                raise SchismError(
                    f"the starting weights do not fit this model ({str(error).splitlines()[0]})"
                ) from None

        train_crops = TrainingCrops(
            self.data,
            split.train,
            cfg.data.crop_size,
            cfg.data.crops_per_image,
            cfg.training.batch_size,
            crop_rng,
            shard=(rank, world),
            order_rng=rng,
        )
        val_positions = split.val
        if not val_positions:
            val_positions = split.train
            self.callback(Message("no validation images: validating on the training images", "warning"))
        val_images, val_masks = fixed_crops(
            self.data, val_positions, cfg.data.crop_size, cfg.data.crops_per_image, seed
        )

        loss_function = build_loss(cfg.loss, cfg.model, self._class_weights(split)).to(self.device)
        optimizer = self._optimizer(model)
        scheduler = self._scheduler(optimizer, len(train_crops))
        use_amp = self.use_amp
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        metrics = cfg.training.score_metrics()
        history: list[dict[str, Any]] = []
        best: dict[str, float] = {}
        first_epoch, stale_epochs = 1, 0
        if self.resume:
            state = load_weights(self.run_dir / LAST_CHECKPOINT)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            saved = state.get("scheduler")
            if scheduler is not None and saved is not None:
                if cfg.scheduler.scheduler == "OneCycleLR" and saved.get("total_steps") != scheduler.total_steps:
                    # more epochs than first planned: the remaining steps anneal over the new total
                    scheduler = self._scheduler(optimizer, len(train_crops), last_epoch=saved["last_epoch"] - 1)
                else:
                    scheduler.load_state_dict(saved)
            if state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
            history, best = state["history"], state["best"]
            first_epoch, stale_epochs = state["epoch"] + 1, state.get("stale_epochs", 0)
            rng.bit_generator.state = state["numpy_rng"]
            generator.set_state(state["torch_rng"])
            if first_epoch > cfg.training.epochs:
                raise SchismError(
                    f"{self.run_dir}: already trained {state['epoch']} of {cfg.training.epochs} epochs; "
                    "raise [Training] epochs in its hyperparameters.ini to continue"
                )

        network: nn.Module = model  # what the training steps call: DDP averages gradients across processes
        if self.dist is not None:
            network = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.callback(
            TrainingStarted(
                self.run_dir,
                str(self.device) if world == 1 else f"{self.device} x {world} processes",
                first_epoch,
                cfg.training.epochs,
                len(train_crops),
                len(split.train),
                len(split.val),
            )
        )
        stopped, reason = False, "completed"
        epoch = first_epoch - 1
        last_matrix = None
        for epoch in range(first_epoch, cfg.training.epochs + 1):
            started = time.perf_counter()
            model.train()
            losses = []
            for number, (images, masks) in enumerate(train_crops, start=1):
                x, y = to_device(images, masks, self.device, cfg.data.img_res)
                if cfg.data.augment:
                    x, y = augment(x, y, generator, cfg.data.intensity_jitter)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = self._target(y)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
                    loss = loss_function(network(x), y)
                if not torch.isfinite(loss):
                    raise SchismError(
                        f"the training loss became {loss.item()} at epoch {epoch}, batch {number}; "
                        "lower [Optimizer] lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.training.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None and cfg.scheduler.scheduler in PER_BATCH_SCHEDULERS:
                    scheduler.step()
                losses.append(loss.item())
                self.callback(BatchEnded(epoch, number, len(train_crops), losses[-1]))
                if self._stop_requested():
                    break
            if self._stop_requested():
                stopped, reason = True, "stopped by the user"
                epoch -= 1  # the interrupted epoch does not count; --resume repeats it
                if BEST_LOSS not in best:
                    # stopped before any epoch ended: keep what was learned as the best so far
                    val_loss, _ = self._validate(model, loss_function, val_images, val_masks)
                    best[BEST_LOSS] = val_loss
                    self._save(self.run_dir / best_weights_file(BEST_LOSS), model.state_dict())
                break

            val_loss, matrix = self._validate(model, loss_function, val_images, val_masks)
            last_matrix = matrix
            scores = {name: matrix.mean(name) for name in metrics}
            per_class = {name: matrix.class_scores(name) for name in metrics}
            improved = []
            if val_loss < best.get(BEST_LOSS, math.inf):
                best[BEST_LOSS] = val_loss
                improved.append(BEST_LOSS)
                stale_epochs = 0
            else:
                stale_epochs += 1
            for name, value in scores.items():
                if np.isfinite(value) and value > best.get(name, -math.inf):
                    best[name] = value
                    improved.append(name)
            for name in improved:
                self._save(self.run_dir / best_weights_file(name), model.state_dict())

            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None and cfg.scheduler.scheduler not in PER_BATCH_SCHEDULERS:
                if cfg.scheduler.scheduler == "ReduceLROnPlateau":
                    scheduler.step(val_loss)
                else:
                    scheduler.step()
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val_loss,
                "lr": lr,
                "seconds": time.perf_counter() - started,
                **scores,
                **{f"{name}_class{k}": v for name, values in per_class.items() for k, v in enumerate(values)},
            }
            history.append(record)
            if self.main:
                self._write_epoch_outputs(history, metrics, curves=self.curves_each_epoch)
            self._save(
                self.run_dir / LAST_CHECKPOINT,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "scaler": scaler.state_dict() if use_amp else None,
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                    "stale_epochs": stale_epochs,
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": generator.get_state(),
                },
            )
            self.callback(
                EpochEnded(
                    epoch,
                    cfg.training.epochs,
                    record["train_loss"],
                    val_loss,
                    scores,
                    per_class,
                    lr,
                    record["seconds"],
                    tuple(improved),
                )
            )
            if cfg.training.early_stopping and stale_epochs >= cfg.training.effective_patience():
                stopped, reason = True, f"early stopping: no better validation loss for {stale_epochs} epochs"
                break

        if history and not self.curves_each_epoch and self.main:
            from ..plotting import save_learning_curves

            save_learning_curves(self.run_dir / CURVES, history, metrics)
        if (
            self.main
            and last_matrix is not None
            and any(canonical_metric(m) == "ConfusionMatrix" for m in cfg.training.metrics)
        ):
            from ..plotting import save_confusion_matrix

            names = self.data.class_names or default_class_names(self.data.class_count)
            save_confusion_matrix(self.run_dir / CONFUSION, last_matrix.matrix.numpy(), names)
        best_path = self.run_dir / best_weights_file(BEST_LOSS)
        if self.dist is not None:
            self.dist.barrier()  # the main process has written the best weights
        if best_path.is_file():
            model.load_state_dict(load_weights(best_path))
        model.eval()
        self.callback(TrainingFinished(self.run_dir, epoch, stopped, reason, dict(best)))
        return TrainingResult(self.run_dir, epoch, stopped, reason, dict(best), history, model, self.config, split)

    @torch.inference_mode()
    def _validate(
        self, model: nn.Module, loss_function: nn.Module, images: np.ndarray, masks: np.ndarray
    ) -> tuple[float, ConfusionMatrix]:
        cfg = self.config
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
                weighted_loss += float(loss_function(logits, y)) * count
                labelled += count
            probabilities = probabilities_from_logits(logits)
            matrix.update(y, predicted_classes(probabilities, cfg.inference.threshold), probabilities)
        return (weighted_loss / labelled if labelled else math.nan), matrix

    def _write_epoch_outputs(self, history: list[dict[str, Any]], metrics: list[str], *, curves: bool) -> None:
        from ..atomic import atomic_write_text
        from ..plotting import save_learning_curves

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


def train(
    config: SchismConfig,
    data: SegmentationData,
    run_dir: Path,
    **options: Any,
) -> TrainingResult:
    """Convenience wrapper: ``Trainer(config, data, run_dir, **options).run()``."""
    return Trainer(config, data, run_dir, **options).run()
