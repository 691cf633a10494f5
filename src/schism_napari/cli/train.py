"""``schism train``: train a model on a dataset folder, or resume an interrupted run."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SchismError
from .progress import TqdmProgress

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

    from ..config import SchismConfig
    from ..events import StopToken
    from ..training.planning import Plan
    from ..workflows import TrainOutcome
    from .common import Commands

# [Training] keys the command line can override, with their options (for messages)
OVERRIDES = (("epochs", "epochs"), ("device", "device"), ("threads", "threads"), ("minutes", "time_budget"))


def add_parser(commands: Commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on a dataset folder (N processes: torchrun --nproc_per_node N -m schism_napari.cli train)",
    )
    train.add_argument(
        "--data", required=True, type=Path, help="SCHISM datasets/ folder, one dataset, BiaPy folder or an image"
    )
    train.add_argument("--mask", type=Path, help="the mask when --data is a single image")
    train.add_argument(
        "--config",
        type=Path,
        help="INI file (SCHISM format); keys it leaves out are planned from the data. Optional; not with --resume",
    )
    train.add_argument("--out", type=Path, help="new run folder for weights, curves and logs")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in its folder")
    train.add_argument("--epochs", type=int, help="override [Training] epochs (e.g. to extend a resumed run)")
    train.add_argument("--device", help="override [Training] device (auto, cpu, cuda, mps)")
    train.add_argument(
        "--per-class", action="store_true", help="one binary model per class + a learned stacker, in one run folder"
    )
    train.add_argument("--threads", type=int, help="override [Training] threads (CPU threads; 0: auto)")
    train.add_argument(
        "--minutes",
        type=float,
        help="[Training] time_budget: train this long (step time measured, steps planned to fit)",
    )
    train.set_defaults(handler=handle)


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    mask: Path | None
    config: Path | None
    out: Path | None
    resume: Path | None
    epochs: int | None
    device: str | None
    per_class: bool
    threads: int | None
    minutes: float | None

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> TrainOptions:
        return cls(
            data=namespace.data,
            mask=namespace.mask,
            config=namespace.config,
            out=namespace.out,
            resume=namespace.resume,
            epochs=namespace.epochs,
            device=namespace.device,
            per_class=namespace.per_class,
            threads=namespace.threads,
            minutes=namespace.minutes,
        )


def handle(namespace: argparse.Namespace) -> int:
    return run(TrainOptions.from_namespace(namespace))


def run(options: TrainOptions) -> int:
    from ..events import StopToken
    from ..plumbing.resources import apply_threads
    from ..workflows import DatasetFolder, TrainRequest, prepare_training, run_training

    config, classes_from_masks = _configuration(options)
    apply_threads(config.training.threads)
    progress = TqdmProgress()
    for warning in config.warnings:
        progress.write(f"warning: {warning}")
    with contextlib.ExitStack() as held:
        run_dir = _claimed_run_dir(held, options, progress)
        request = TrainRequest(
            config,
            DatasetFolder(options.data, config, mask=options.mask, callback=progress),
            run_dir,
            resume=options.resume is not None,
            classes_from_masks=classes_from_masks,
            # processes split by a shared random seed: no held-out choice
            held_out=int(os.environ.get("WORLD_SIZE", "1")) <= 1,
            per_class=options.per_class,
        )
        prepared = prepare_training(request)
        if prepared.plan is not None:
            _print_plan(prepared.plan)
        if options.per_class:
            _check_per_class(options)
        stop = StopToken()
        with stop_on_interrupt(stop):
            outcome = run_training(prepared, callback=progress, stop=stop)
        _report(outcome, run_dir, progress)
    return 0


def _configuration(options: TrainOptions) -> tuple[SchismConfig, bool]:
    """The run's configuration (the resumed run's, the INI's or the defaults) with the command
    line's [Training] overrides, validated; and whether the class count comes from the masks."""
    from ..config import SchismConfig
    from ..runs import read_run_config

    if options.resume is not None:
        if options.out is not None and options.out.resolve() != options.resume.resolve():
            raise SchismError("--resume continues in its own run folder; leave out --out")
        config = read_run_config(options.resume)
    else:
        if options.out is None:
            raise SchismError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        config = SchismConfig.from_ini(options.config) if options.config is not None else SchismConfig()
    overrides = {}  # [Training] key -> the option that set it, for messages
    for option, key in OVERRIDES:
        value = getattr(options, option)
        if value is not None:
            config.set_given("Training", key, value)
            overrides[key] = f"--{option}"
    classes_from_masks = options.resume is None and not config.is_given("Model", "num_classes")
    if classes_from_masks:
        config.model.num_classes = _classes_from_masks(options.data, options.mask)
    validate_with_overrides(config, overrides)
    return config, classes_from_masks


def _claimed_run_dir(held: contextlib.ExitStack, options: TrainOptions, progress: TqdmProgress) -> Path:
    """The run folder, claimed for this run in ``held`` and removed when the run fails before it
    wrote anything worth keeping. Under torchrun every process runs this; only rank 0 creates the
    run folder and writes files."""
    from ..plumbing.output_folders import removed_on_failure
    from ..runs import (
        BEST_LOSS,
        LAST_CHECKPOINT,
        best_weights_file,
        claimed_new_run_dir,
        claimed_run_dir,
        remove_partial_files,
    )

    main_process = int(os.environ.get("RANK", "0")) == 0
    created = False
    if options.resume is None:  # refuse a used --out (or one another process is starting in) before any reading
        out = options.out
        assert out is not None  # _configuration refused a train without --out or --resume
        created = not out.exists()
        hint = "choose a new --out folder (or --resume RUN_DIR to continue a run)"
        run_dir = held.enter_context(claimed_new_run_dir(out, hint=hint)) if main_process else out
    else:
        run_dir = options.resume
        if main_process:
            held.enter_context(claimed_run_dir(run_dir))  # not while another process trains in it
            removed = remove_partial_files(run_dir)  # held: no live writer's temporary files
            if removed:
                progress.write(f"removed {len(removed)} partial file(s) an interrupted run left in {run_dir}")
    # what a failed first epoch leaves worth keeping: a checkpoint to resume, the best weights to predict
    keep = (LAST_CHECKPOINT, best_weights_file(BEST_LOSS))
    held.enter_context(removed_on_failure(run_dir, created and main_process, keep_if=keep))
    return run_dir


def _report(outcome: TrainOutcome, run_dir: Path, progress: TqdmProgress) -> None:
    if outcome.per_class is not None:
        result = outcome.per_class
        progress.write(
            f"per-class run ({len(result.member_runs)} members + stacker) in {result.seconds:.0f}s: {run_dir}"
        )
    elif outcome.selection is not None:
        progress.write(f"chose {outcome.selection.describe()}; predictions from {outcome.run_dir} use it")


def _print_plan(plan: Plan) -> None:
    """Say why each key the INI left out was planned from the data (see :mod:`schism_napari.training.planning`)."""
    for key, reason in plan.reasons.items():
        if "." in key:
            section, name = key.split(".", 1)
            # a report, not progress: stdout, so stderr keeps one line when something then fails
            print(f"plan: [{section}] {name} = {getattr(plan.config.section(section), name)}  ({reason})")


def _check_per_class(options: TrainOptions) -> None:
    """``train --per-class``: one-vs-rest members and a stacker, written as one new run folder."""
    if options.resume is not None:
        raise SchismError("--per-class cannot --resume; train a new run folder")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SchismError("--per-class runs in one process; start it without torchrun")


def _classes_from_masks(data: Path, mask: Path | None) -> int:
    from ..training.planning import infer_class_count

    try:
        count = infer_class_count(data, mask)
    except (OSError, ValueError) as error:
        raise SchismError(f"--data {data}: cannot read the masks to count the classes ({error})") from None
    if count is None:
        raise SchismError(f"--data {data}: the mask values fit no class encoding; set [Model] num_classes in an INI")
    return count


def validate_with_overrides(config: SchismConfig, overrides: dict[str, str]) -> None:
    """Validate the whole configuration; a bad value given as a [Training] option on the command
    line is blamed on that option, not on the INI file it overrides."""
    from ..errors import ConfigError

    try:
        config.validate()
    except ConfigError as error:
        if error.section == "Training" and error.key in overrides:
            raise SchismError(
                f"{overrides[error.key]} {error.value} (command line, overrides [Training] {error.key}): "
                f"{error.allowed}"
            ) from None
        raise


@contextlib.contextmanager
def stop_on_interrupt(stop: StopToken) -> Iterator[None]:
    """First Ctrl-C asks the loop to stop after this batch; the second one aborts."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()
        print("\nschism: stopping after this batch (Ctrl-C again to abort)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
