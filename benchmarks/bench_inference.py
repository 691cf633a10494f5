"""Tiled prediction against MONAI, threads on a busy machine, and the dask path: one command, one input.

    .venv/bin/python benchmarks/bench_inference.py            # 1024^2 image, 3 repeats (~10 min on 2 busy cores)
    .venv/bin/python benchmarks/bench_inference.py --quick    # 512^2, 2 repeats, fewer sections (~3 min)

Sections (see benchmarks/README.md for what each number means):

1. trains smp Unet/resnet18 (1 -> 3 classes) briefly on the synthetic rock sample (``make_rock``),
   so argmax agreement is measured on a model that segments, not a coin toss;
2. project vs MONAI ``sliding_window_inference(mode="gaussian")``, at its defaults and given the
   channels_last module, at overlap 0 / 0.25 / 0.5 and at the project's default (halo) tiling:
   image MP/s, ratios, argmax agreement with one whole-image forward; tiling overhead at overlap 0
   against the raw batched forward of the same tiles; medians of interleaved repeats;
3. threads: torch's default, each fixed count and the count ``resources.choose_threads`` picks,
   idle and beside one CPU-bound busy-loop process;
4. peak RSS of ``schism predict`` at two stack depths (``--zarr`` and ``--probabilities`` TIFF);
5. the dask path: a two-process LocalCluster against one process on the same stack (time, labels identical).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schism_napari.config import InferenceConfig, SchismConfig
from schism_napari.data import samples_from_arrays
from schism_napari.inference import Predictor
from schism_napari.models.probabilities import probabilities_from_logits
from schism_napari.plumbing.resources import allowed_cores, choose_threads
from schism_napari.runs import load_trained_model
from schism_napari.sample import make_rock
from schism_napari.training.trainer import Trainer

CLASSES = 3
TRAIN_INI = """
[Model]
model_type = Unet
encoder = resnet18
num_classes = 3
[Optimizer]
optimizer = AdamW
lr = 0.003
[Scheduler]
scheduler = OneCycleLR
[Loss]
loss = CrossEntropyLoss
[Training]
batch_size = 8
epochs = {epochs}
val_split = 0.8
seed = 0
[Data]
crop_size = 128
img_res = 128
num_samples = 5
crops_per_image = 24
"""


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min)"


def clock(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Each variant once to warm up, then ``repeats`` rounds of all variants in turn (order rotated)."""
    for function in variants.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            times[name].append(clock(variants[name]))
    return times


# ---- 1. a trained model ------------------------------------------------------------------------


def train_model(folder: Path, epochs: int) -> Any:
    images, masks = zip(*(make_rock((512, 512), seed=s) for s in range(5)), strict=True)
    data = samples_from_arrays(list(images), list(masks), class_count=CLASSES)
    config = SchismConfig.from_ini_string(TRAIN_INI.format(epochs=epochs), source="bench.ini")
    started = time.perf_counter()
    Trainer(config, data, folder / "run", curves_each_epoch=False).run()
    print(f"trained Unet/resnet18 for {epochs} epochs in {time.perf_counter() - started:.0f}s")
    return load_trained_model(folder / "run")


# ---- 2. project vs MONAI -----------------------------------------------------------------------


def compare_with_monai(trained: Any, size: int, repeats: int, batch: int, core_only: bool = False) -> list[str]:
    import copy

    from monai.inferers import sliding_window_inference

    image, truth = make_rock((size, size), seed=11)
    model = trained.model.eval()
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    a, b = trained.normalization.affine(image.dtype, 1)
    normalised = torch.from_numpy((image.astype(np.float32) * a[0] + b[0])[None, None])

    def project(overlap: float | None, tile: int | None = 256, halo: int | None = None) -> Predictor:
        settings = InferenceConfig(tile_size=tile, overlap=overlap, halo=halo, batch_size=batch)
        return Predictor(
            model,
            class_count=CLASSES,
            in_channels=1,
            normalization=trained.normalization,
            settings=settings,
            device="cpu",
        )

    def monai(module: torch.nn.Module, overlap: float, channels_last: bool) -> Callable[[], np.ndarray]:
        def network(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return probabilities_from_logits(module(x))

        def run() -> np.ndarray:
            with torch.inference_mode():
                out = sliding_window_inference(normalised, 256, batch, network, overlap=overlap, mode="gaussian")
            return out[0].argmax(0).numpy().astype(np.uint8)

        return run

    default = project(None, tile=None)
    zero_default = project(None, tile=None, halo=0)
    (tile_h, tile_w), positions, _ = zero_default.layout(size, size)
    predictors = {f"project overlap {o}": project(o) for o in (0.0, 0.25, 0.5)}
    predictors["project default (halo)"] = default
    predictors["project halo 0"] = zero_default
    labels: dict[str, np.ndarray] = {}

    def keep(name: str, function: Callable[[], np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            labels[name] = function()

        return run

    if core_only:  # the default-overlap comparison alone (large images on a slow machine)
        predictors = {k: v for k, v in predictors.items() if k in ("project default (halo)", "project overlap 0.25")}
    variants: dict[str, Callable[[], None]] = {}
    for name, predictor in predictors.items():
        variants[name] = keep(name, lambda p=predictor: p.predict(image, keep_probabilities=False).labels)
    for o in (0.25,) if core_only else (0.0, 0.25, 0.5):
        variants[f"MONAI overlap {o}"] = keep(f"MONAI overlap {o}", monai(plain, o, False))
        variants[f"MONAI overlap {o} channels_last"] = keep(f"MONAI overlap {o} channels_last", monai(last, o, True))
    raw_256 = torch.cat(
        [normalised[..., y : y + 256, x : x + 256] for y in range(0, size, 256) for x in range(0, size, 256)]
    )
    raw_256 = raw_256.contiguous(memory_format=torch.channels_last)
    raw_auto = torch.cat([normalised[..., y : y + tile_h, x : x + tile_w] for y, x in positions])
    raw_auto = raw_auto.contiguous(memory_format=torch.channels_last)

    def raw(tiles: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for start in range(0, len(tiles), batch):
                    last(tiles[start : start + batch])

        return run

    if not core_only:
        variants["raw forward 256 tiles"] = raw(raw_256)
        variants[f"raw forward {tile_h}x{tile_w} tiles"] = raw(raw_auto)
    with torch.inference_mode():
        whole = probabilities_from_logits(last(normalised.contiguous(memory_format=torch.channels_last)))
    whole_labels = whole[0].argmax(0).numpy().astype(np.uint8)
    print(
        f"project default tiling on {size}^2: tile {default.tile_size} (fitted {default.layout(size, size)[0]}), "
        f"halo {default.halo}, {len(default.layout(size, size)[1])} tiles; {load()}"
    )
    times = interleaved(variants, repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    megapixels = size * size / 1e6
    rows = [
        "| variant | image MP/s (median) | best s | argmax agreement with whole image | vs truth |",
        "|---|---|---|---|---|",
    ]
    for name in variants:
        agreement = f"{(labels[name] == whole_labels).mean() * 100:.2f} %" if name in labels else "n/a"
        truth_score = f"{(labels[name] == truth).mean() * 100:.1f} %" if name in labels else "n/a"
        rows.append(
            f"| {name} | {megapixels / median[name]:.3f} | {min(times[name]):.2f} | {agreement} | {truth_score} |"
        )
    rows.append(f"| whole image, one forward | | | 100 % | {(whole_labels == truth).mean() * 100:.1f} % |")

    def ratio(a: str, b: str) -> str:
        return f"{median[b] / median[a]:.2f}x"

    rows += [
        "",
        "| ratio (medians) | value |",
        "|---|---|",
        f"| project default vs MONAI defaults (0.25) | {ratio('project default (halo)', 'MONAI overlap 0.25')} |",
        "| project default vs MONAI channels_last (0.25) | "
        f"{ratio('project default (halo)', 'MONAI overlap 0.25 channels_last')} |",
    ]
    if core_only:
        rows.append(
            f"| project vs MONAI at overlap 0.25, 256 px tiles: defaults / channels_last | "
            f"{ratio('project overlap 0.25', 'MONAI overlap 0.25')} / "
            f"{ratio('project overlap 0.25', 'MONAI overlap 0.25 channels_last')} |"
        )
        return rows
    for o in (0.0, 0.25, 0.5):
        rows.append(
            f"| project vs MONAI at overlap {o}, 256 px tiles: defaults / channels_last | "
            f"{ratio(f'project overlap {o}', f'MONAI overlap {o}')} / "
            f"{ratio(f'project overlap {o}', f'MONAI overlap {o} channels_last')} |"
        )
    overhead_256 = median["project overlap 0.0"] / median["raw forward 256 tiles"] - 1
    overhead_auto = median["project halo 0"] / median[f"raw forward {tile_h}x{tile_w} tiles"] - 1
    best_256 = min(times["project overlap 0.0"]) / min(times["raw forward 256 tiles"]) - 1
    best_auto = min(times["project halo 0"]) / min(times[f"raw forward {tile_h}x{tile_w} tiles"]) - 1
    rows.append(
        f"| tiling overhead at overlap 0, 256 px tiles (median / best) | {overhead_256:+.1%} / {best_256:+.1%} |"
    )
    rows.append(
        f"| tiling overhead at halo 0, {tile_h}x{tile_w} tiles (median / best) | "
        f"{overhead_auto:+.1%} / {best_auto:+.1%} |"
    )
    return rows


# ---- 3. threads --------------------------------------------------------------------------------


def busy_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def compare_threads(trained: Any, size: int, repeats: int) -> list[str]:
    image, _ = make_rock((size, size), seed=12)
    predictor = Predictor(
        trained.model,
        class_count=CLASSES,
        in_channels=1,
        normalization=trained.normalization,
        settings=InferenceConfig(batch_size=4),
        device="cpu",
    )
    default = torch.get_num_threads()
    counts = list(range(1, allowed_cores() + 1))  # torch's default is one per core: the last
    rows = [
        f"| {size}^2, default tiling | " + " | ".join(f"{n} threads s" for n in counts) + " | chosen | chosen s | "
        "chosen / best |",
        "|---|" + "---|" * (len(counts) + 3),
    ]
    for situation in ("idle", "beside 1 busy process"):
        busy = busy_process() if situation != "idle" else None
        try:
            time.sleep(1.0)
            chosen = choose_threads()
            times: dict[int, list[float]] = {n: [] for n in counts}
            chosen_times: list[float] = []
            for _ in range(repeats):
                for n in counts:
                    torch.set_num_threads(n)
                    times[n].append(clock(lambda: predictor.predict(image, keep_probabilities=False)))
                torch.set_num_threads(chosen)
                chosen_times.append(clock(lambda: predictor.predict(image, keep_probabilities=False)))
        finally:
            if busy is not None:
                busy.terminate()
                busy.wait()
            torch.set_num_threads(default)
        medians = {n: statistics.median(t) for n, t in times.items()}
        chosen_median = statistics.median(chosen_times)
        rows.append(
            f"| {situation} | "
            + " | ".join(f"{medians[n]:.2f}" for n in counts)
            + f" | {chosen} | {chosen_median:.2f} | {chosen_median / min(medians.values()):.2f} |"
        )
    return rows


# ---- 4. peak RSS -------------------------------------------------------------------------------


def peak_rss(run_dir: Path, folder: Path, depths: tuple[int, ...], side: int) -> list[str]:
    import tifffile

    rows = ["| depth | `--zarr` peak RSS MB | `--probabilities` TIFF peak RSS MB |", "|---|---|---|"]
    for depth in depths:
        stack, _ = make_rock((depth, side, side), seed=13)
        path = folder / f"stack_{depth}.tif"
        tifffile.imwrite(path, stack)
        cells = []
        for option in ("--zarr", "--probabilities"):
            out = folder / f"out_{depth}_{option.strip('-')}"
            code = (
                "import sys; from schism_napari.cli import main; "
                f"code = main(['predict', '--weights', {str(run_dir)!r}, '--input', {str(path)!r}, "
                f"'--out', {str(out)!r}, {option!r}]); "
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
                "print('RSS', hwm); sys.exit(code)"
            )
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            line = [x for x in result.stdout.splitlines() if x.startswith("RSS")]
            cells.append(f"{int(line[0].split()[1]) / 1024:.0f}" if line else f"failed ({result.returncode})")
        rows.append(f"| {depth} | {cells[0]} | {cells[1]} |")
    return rows


# ---- 5. dask -----------------------------------------------------------------------------------


def dask_path(run_dir: Path, folder: Path, depth: int, side: int) -> list[str]:
    import tifffile
    import zarr
    from distributed import Client, LocalCluster

    from schism_napari.inference.distributed import predict_distributed
    from schism_napari.inference.files import open_lazy

    stack, _ = make_rock((depth, side, side), seed=14)
    path = folder / "dask_stack.tif"
    tifffile.imwrite(path, stack)
    trained = load_trained_model(run_dir)
    settings = InferenceConfig(batch_size=4)
    cores = allowed_cores()
    single = Predictor.from_trained(trained, settings=settings, device="cpu")
    torch.set_num_threads(max(1, choose_threads()))
    started = time.perf_counter()
    expected = single.predict(open_lazy(path)[0], keep_probabilities=False).labels
    one_process = time.perf_counter() - started
    rows = ["| path | workers x threads | seconds | MP/s | labels identical to one process |", "|---|---|---|---|---|"]
    megapixels = depth * side * side / 1e6
    rows.append(
        f"| one process | 1 x {torch.get_num_threads()} | {one_process:.1f} | {megapixels / one_process:.3f} | |"
    )
    threads = max(1, cores // 2)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        result = predict_distributed(
            run_dir, path, folder / "dask_labels.ome.zarr", settings=settings, threads=threads, client=client
        )
    labels = zarr.open_group(str(folder / "dask_labels.ome.zarr"), mode="r")["0"][:]
    loads = {c["pid"]: c["loads"] for c in result.chunks}
    rows.append(
        f"| dask LocalCluster ({len(result.chunks)} chunks, model loads per worker {sorted(loads.values())}) | "
        f"2 x {threads} | {result.seconds:.1f} | {megapixels / result.seconds:.3f} | "
        f"{'yes' if np.array_equal(labels, expected) else 'NO'} |"
    )
    return rows


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512^2, 2 repeats, no memory section")
    parser.add_argument("--size", type=int, help="image side for the MONAI comparison (default 1024; 512 quick)")
    parser.add_argument("--repeats", type=int, help="interleaved timed repeats (default 3; 2 quick)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass (project and MONAI)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of the sample model")
    parser.add_argument(
        "--core-only", action="store_true", help="MONAI section: the default-overlap comparison only (large images)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=("monai", "threads", "memory", "dask"))
    arguments = parser.parse_args()
    size = arguments.size or (512 if arguments.quick else 1024)
    repeats = arguments.repeats or (2 if arguments.quick else 3)
    skip = set(arguments.skip) | ({"memory"} if arguments.quick else set())
    default_threads = torch.get_num_threads()
    threads = choose_threads()
    torch.set_num_threads(threads)  # as the CLI does; the same count for the project, MONAI and the raw forward
    print(
        f"torch {torch.__version__}, default {default_threads} threads, {allowed_cores()} allowed cores, "
        f"running with the chosen {threads}; {load()}"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        trained = train_model(folder, arguments.epochs)
        sections = []
        if "monai" not in skip:
            comparison = compare_with_monai(trained, size, repeats, arguments.batch, arguments.core_only)
            sections.append(("Project vs MONAI", comparison))
        if "threads" not in skip:
            sections.append(("Threads", compare_threads(trained, size // 2, repeats)))
        if "memory" not in skip:
            sections.append(
                ("Peak RSS of schism predict (256^2 slices)", peak_rss(folder / "run", folder, (16, 64), 256))
            )
        if "dask" not in skip:
            sections.append(("Dask path", dask_path(folder / "run", folder, 16, size // 2)))
        for title, rows in sections:
            print(f"\n### {title}\n")
            print("\n".join(rows))
    print(f"\n{load()}; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
