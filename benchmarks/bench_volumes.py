"""Tri-planar consensus, ensembles and per-class stacking: held-out mean IoU and time.

* synthetic rock CT (``schism_napari.sample.make_rock``, the sample's two training volumes and its
  held-out test volume): XY vs XYZ prediction, for a model trained on XY slices and one trained with
  ``[Data] planes = xyz``; one run vs the mean of two runs (seeds 0 and 1) vs ``--per-class``.
* ISBI 2012 EM (``../shared/datasets/isbi2012-em``, when present): trained on slices 0-24, scored on
  the held-out stack 25-29, XY vs XYZ treating the voxels as cubic, and XYZ with the real
  anisotropy (50 nm sections, 4 nm pixels: ratio 12.5, refused by default, forced here).
* streaming: peak memory of a tri-planar pass over zarr stacks of two depths, in slabs.

Run from the repository root (about 5-8 minutes on 2 busy cores)::

    .venv/bin/python benchmarks/bench_volumes.py [--quick] [--isbi PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schism_napari.config import SchismConfig
from schism_napari.data import load_dataset, samples_from_arrays
from schism_napari.evaluation.metrics import ConfusionMatrix
from schism_napari.inference import Predictor
from schism_napari.inference.ensemble import EnsemblePredictor
from schism_napari.inference.planes import TriPlanarPredictor
from schism_napari.runs import load_trained_model
from schism_napari.sample import SAMPLE_INI, make_rock
from schism_napari.training.per_class import train_per_class
from schism_napari.training.trainer import Trainer

ISBI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2012-em"
ISBI_RATIO = 50 / 4  # serial sections 50 nm thick, 4 nm pixels

ISBI_INI = """\
[Model]
model_type = UnetSegmentor
num_classes = 2
n_block = 3
channels = 8
activation = leakyrelu
p = 0.1

[Optimizer]
optimizer = AdamW
lr = 0.01

[Scheduler]
scheduler = OneCycleLR

[Loss]
loss = CrossEntropyLoss + 0.5*DiceLoss

[Training]
batch_size = 8
epochs = 8
val_split = 0.8
metrics = Jaccard

[Data]
crop_size = 128
img_res = 128
num_samples = 500
crops_per_image = 3

[Inference]
tile_size = 256
overlap = 0.25
batch_size = 4
"""


def mean_iou(labels: np.ndarray, truth: np.ndarray, classes: int) -> float:
    matrix = ConfusionMatrix(classes)
    matrix.update(truth.astype(np.uint8), labels)
    return float(matrix.mean("Jaccard"))


def timed(predictor: Any, volume: np.ndarray, truth: np.ndarray, classes: int, rgb: bool = False) -> dict[str, float]:
    started = time.perf_counter()
    labels = predictor.predict(volume, rgb=rgb, keep_probabilities=False).labels
    seconds = time.perf_counter() - started
    return {"mean_iou": round(mean_iou(labels, truth, classes), 4), "seconds": round(seconds, 2)}


def train(config: SchismConfig, data: Any, out: Path, seed: int = 0) -> tuple[Any, float]:
    config = config.copy()
    config.training.seed = seed
    started = time.perf_counter()
    Trainer(config, data, out).run()
    return load_trained_model(out), time.perf_counter() - started


def predictor(trained: Any) -> Predictor:
    return Predictor.from_trained(trained, device="cpu")


# ---- synthetic rock CT ---------------------------------------------------------------------------


def synthetic(work: Path, quick: bool) -> dict[str, Any]:
    slices, size = (8, 128) if quick else (12, 192)
    volumes = [make_rock((slices, size, size), seed=s) for s in (0, 1)]  # the sample's rock_a, rock_b
    test_image, test_labels = make_rock((slices, size, size), seed=10)  # the sample's test_volume
    config = SchismConfig.from_ini_string(SAMPLE_INI, source="sample.ini")
    if quick:
        config.training.epochs = 2
    images, masks = [v for v, _ in volumes], [m for _, m in volumes]
    xy_data = samples_from_arrays(images, masks, class_count=3, names=["rock_a", "rock_b"])
    xyz_data = samples_from_arrays(images, masks, class_count=3, names=["rock_a", "rock_b"], planes="xyz")
    config.data.num_samples = len(xyz_data.samples)  # every image trains or validates: the test volume is apart
    results: dict[str, Any] = {"volume": list(test_image.shape)}
    xy_model, xy_train = train(config, xy_data, work / "xy")
    xyz_model, xyz_train = train(config, xyz_data, work / "xyz")
    results["train_seconds"] = {"xy_slices": round(xy_train, 1), "xyz_planes": round(xyz_train, 1)}
    for name, model in (("trained_xy", xy_model), ("trained_xyz", xyz_model)):
        base = predictor(model)
        results[name] = {
            "predict_xy": timed(base, test_image, test_labels, 3),
            "predict_xyz": timed(TriPlanarPredictor(base), test_image, test_labels, 3),
        }
    second, _ = train(config, xy_data, work / "xy_seed1", seed=1)
    per_class_started = time.perf_counter()
    per_class = train_per_class(config, xy_data, work / "per_class")
    per_class_train = time.perf_counter() - per_class_started
    members = [predictor(xy_model), predictor(second)]
    results["ensembles"] = {
        "run_seed0": timed(members[0], test_image, test_labels, 3),
        "run_seed1": timed(members[1], test_image, test_labels, 3),
        "mean_of_both": timed(EnsemblePredictor(members), test_image, test_labels, 3),
        "per_class_stacked": timed(predictor(load_trained_model(per_class.run_dir)), test_image, test_labels, 3),
        "train_seconds": {"one_run": round(xy_train, 1), "per_class": round(per_class_train, 1)},
        "per_class_validation": per_class.stacker_scores,
    }
    return results


# ---- ISBI 2012 EM --------------------------------------------------------------------------------


def isbi(work: Path, root: Path, quick: bool) -> dict[str, Any]:
    config = SchismConfig.from_ini_string(ISBI_INI, source="isbi.ini")
    if quick:
        config.training.epochs = 2
    train_data = load_dataset(root / "datasets" / "em", class_count=2, write_stats=False)
    heldout = load_dataset(root / "heldout", class_count=2, write_stats=False)
    stack = np.stack([s.image for s in heldout.samples])  # (5, 512, 512, 1)
    truth = np.stack([s.mask for s in heldout.samples])
    volume = np.stack([s.image for s in train_data.samples])  # slices 0-24 as one stack
    masks = np.stack([s.mask for s in train_data.samples])
    xyz_data = samples_from_arrays([volume[..., 0]], [masks], class_count=2, names=["em"], planes="xyz")
    results: dict[str, Any] = {"heldout_stack": list(stack.shape[:3]), "true_voxel_ratio": ISBI_RATIO}
    xy_model, xy_train = train(config, train_data, work / "isbi_xy")
    xyz_model, xyz_train = train(config, xyz_data, work / "isbi_xyz")
    results["train_seconds"] = {"xy_slices": round(xy_train, 1), "xyz_planes": round(xyz_train, 1)}
    for name, model in (("trained_xy", xy_model), ("trained_xyz", xyz_model)):
        base = predictor(model)
        entry = {
            "predict_xy": timed(base, stack, truth, 2, rgb=True),
            "predict_xyz_as_cubic": timed(TriPlanarPredictor(base), stack, truth, 2, rgb=True),
        }
        forced = TriPlanarPredictor(base, voxel_ratio=ISBI_RATIO, max_ratio=20)
        entry["predict_xyz_resampled_12.5"] = timed(forced, stack, truth, 2, rgb=True)
        try:
            TriPlanarPredictor(base, voxel_ratio=ISBI_RATIO)
            entry["default_refusal"] = None
        except Exception as error:  # the refusal users get by default
            entry["default_refusal"] = str(error)
        results[name] = entry
    second, _ = train(config, train_data, work / "isbi_xy_seed1", seed=1)
    members = [predictor(xy_model), predictor(second)]
    results["ensembles"] = {
        "run_seed0": timed(members[0], stack, truth, 2, rgb=True),
        "run_seed1": timed(members[1], stack, truth, 2, rgb=True),
        "mean_of_both": timed(EnsemblePredictor(members), stack, truth, 2, rgb=True),
    }
    return results


# ---- streaming memory ----------------------------------------------------------------------------


def streaming_child(depth: int, size: int, slab: int | None, folder: str) -> None:
    """In a fresh process: tri-planar prediction of a zarr stack into zarr outputs; print peak RSS."""
    import zarr

    from schism_napari.config import InferenceConfig
    from schism_napari.data.normalization import Normalization
    from schism_napari.models import build_model

    torch.set_num_threads(1)
    before = _high_water_mb()
    source = zarr.open_array(f"{folder}/in_{depth}.zarr", mode="r")
    config = SchismConfig.from_ini_string(SAMPLE_INI).model
    model = build_model(config, 1)
    base = Predictor(model, class_count=3, in_channels=1, normalization=Normalization((0.4,), (0.1,)),
                     settings=InferenceConfig(tile_size=128, batch_size=8), device="cpu")  # fmt: skip
    labels = zarr.open_array(f"{folder}/labels_{depth}_{slab}.zarr", mode="w", shape=source.shape,
                             chunks=(1, size, size), dtype="uint8")  # fmt: skip
    started = time.perf_counter()
    TriPlanarPredictor(base, slab_depth=slab).predict(source, keep_probabilities=False, labels_out=labels)
    seconds = time.perf_counter() - started
    peak = _high_water_mb()
    print(json.dumps({"depth": depth, "slab": slab, "peak_rss_mb": peak, "after_imports_rss_mb": before,
                      "seconds": round(seconds, 1)}))  # fmt: skip


def _high_water_mb() -> int:
    """Peak resident memory of this process image (VmHWM; ru_maxrss would include the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def streaming(work: Path, quick: bool) -> list[dict[str, Any]]:
    import zarr

    size = 128
    depths = (24, 72) if quick else (64, 256)
    rows = []
    for depth in depths:
        image, _ = make_rock((depth, size, size), seed=3)
        array = zarr.open_array(str(work / f"in_{depth}.zarr"), mode="w", shape=image.shape,
                                chunks=(1, size, size), dtype=image.dtype)  # fmt: skip
        array[:] = image
        for slab in (32, None) if depth == depths[-1] else (32,):
            command = [sys.executable, __file__, "--streaming-child", str(depth), str(size), str(slab), str(work)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--isbi", type=Path, default=ISBI)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=("synthetic", "isbi", "streaming"))
    parser.add_argument("--streaming-child", nargs=4, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.streaming_child:
        depth, size, slab, folder = arguments.streaming_child
        streaming_child(int(depth), int(size), None if slab == "None" else int(slab), folder)
        return
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is steadier
    report: dict[str, Any] = {"uptime_before": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if arguments.only in (None, "streaming"):
            report["streaming"] = streaming(work, arguments.quick)
            print(json.dumps(report["streaming"], indent=1), flush=True)
        if arguments.only in (None, "synthetic"):
            report["synthetic"] = synthetic(work, arguments.quick)
            print(json.dumps(report["synthetic"], indent=1), flush=True)
        if arguments.only in (None, "isbi") and arguments.isbi.is_dir():
            report["isbi"] = isbi(work, arguments.isbi, arguments.quick)
            print(json.dumps(report["isbi"], indent=1), flush=True)
    report["uptime_after"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
