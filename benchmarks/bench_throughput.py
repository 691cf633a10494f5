"""Training throughput on this machine's CPU, side by side in one run (issue #18, point 4).

What a CPU's minute buys decides what the network learns with scribbles. This measures optimizer
steps of the planned network (smp Unet/resnet18, ``CrossEntropyLoss + DiceLoss``, AdamW) on random
batches, for:

* memory layout: ``channels_last`` (what the trainer uses on a CPU) against contiguous NCHW;
* ``torch.compile`` (inductor), its compile time reported apart;
* crop size and batch: 256 px x 4 (the plan), 192 x 7 and 128 x 16 (about the same pixels per step);
* the thread count: all cores, and one fewer.

Each variant runs ``--repeats`` rounds of ``--steps`` steps after two warm-up steps; the table gives
the median seconds per step, the labelled pixels per second, and the ratio to the plan's layout.
Ratios are what to read on a shared machine. Run from the repository root, alone::

    .venv/bin/python benchmarks/bench_throughput.py                # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_throughput.py --no-compile   # without torch.compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from schism_napari.config import SchismConfig
from schism_napari.models import build_model
from schism_napari.training.losses import build_loss


@dataclass
class Variant:
    name: str
    crop: int
    batch: int
    channels_last: bool = True
    compiled: bool = False
    threads: int | None = None


def make_step(variant: Variant, in_channels: int) -> tuple[Callable[[], float], float]:
    """A closure running one optimizer step, and the seconds compiling took (0 without compile)."""
    config = SchismConfig()
    config.model.model_type, config.model.encoder, config.model.num_classes = "Unet", "resnet18", 2
    config.loss.loss = "CrossEntropyLoss + DiceLoss"
    config.validate()
    torch.manual_seed(0)
    model = build_model(config.model, in_channels)
    loss_function = build_loss(config.loss, config.model, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(variant.batch, in_channels, variant.crop, variant.crop)
    y = torch.randint(0, 2, (variant.batch, variant.crop, variant.crop))
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    compile_seconds = 0.0
    if variant.compiled:
        forward = torch.compile(model)  # type: ignore[assignment]
    model.train()

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(forward(x), y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    if variant.compiled:
        compile_seconds = step()  # the first call compiles
    return step, compile_seconds


def measure(variant: Variant, steps: int, repeats: int, in_channels: int) -> dict[str, float]:
    threads = torch.get_num_threads()
    if variant.threads is not None:
        torch.set_num_threads(variant.threads)
    try:
        step, compile_seconds = make_step(variant, in_channels)
        for _ in range(2):
            step()
        rounds = [statistics.mean(step() for _ in range(steps)) for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    seconds = statistics.median(rounds)
    return {
        "seconds": seconds,
        "pixels_per_second": variant.batch * variant.crop**2 / seconds,
        "compile": compile_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--in-channels", type=int, default=1, help="3: a two-stage model on gray images, 2 classes")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    options = parser.parse_args()
    cores = torch.get_num_threads()
    variants = [
        Variant("plan: 256 px x 4, channels_last", 256, 4),
        Variant("256 px x 4, contiguous (NCHW)", 256, 4, channels_last=False),
        Variant("192 px x 7, channels_last", 192, 7),
        Variant("128 px x 16, channels_last", 128, 16),
    ]
    if cores > 1:
        variants.append(Variant(f"256 px x 4, {cores - 1} thread(s)", 256, 4, threads=cores - 1))
    if options.compile:
        variants.append(Variant("256 px x 4, torch.compile", 256, 4, compiled=True))
    print(f"torch {torch.__version__}, {cores} threads, load average {os.getloadavg()}", flush=True)
    print("| variant | s per step (median) | pixels per s | vs plan | compile |")
    print("|---|---|---|---|---|")
    reference = None
    for variant in variants:
        try:
            result = measure(variant, options.steps, options.repeats, options.in_channels)
        except Exception as error:  # torch.compile needs a C compiler; say so and go on
            print(f"| {variant.name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | | |")
            continue
        reference = reference or result["pixels_per_second"]
        compile_text = f"{result['compile']:.0f} s" if variant.compiled else ""
        print(
            f"| {variant.name} | {result['seconds']:.3f} | {result['pixels_per_second']:,.0f} | "
            f"{result['pixels_per_second'] / reference:.2f} | {compile_text} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
