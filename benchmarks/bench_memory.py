"""Peak memory of file-to-file prediction against the depth of the volume.

Each measurement runs in a fresh subprocess (``predict_to_files`` on a uint16 TIFF stack of
``--size`` x ``--size`` slices, labels plus probabilities as TIFF or as OME-Zarr) and reports its
``ru_maxrss``, which counts the pages of memory-mapped files as well as anonymous memory. The
network is a 1x1 convolution so the numbers show what the file handling costs, not the model.

    python benchmarks/bench_memory.py                  # depths 16 and 128, 512 px slices
    python benchmarks/bench_memory.py --depths 16 64 128 --size 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

import torch
from torch import nn

from schism_napari.data.normalization import Normalization
from schism_napari.inference import Predictor, Slices
from schism_napari.inference.files import open_lazy, predict_to_files

source, out, mode, classes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
model = nn.Conv2d(1, classes, 1)
model.size_divisor = 1
predictor = Predictor(model, class_count=classes, in_channels=1, normalization=Normalization((0.5,), (0.2,)),
                      tile_size=512)
array, rgb = open_lazy(source)
started = time.perf_counter()
suffix = ".zarr" if mode == "zarr" else ".tif"
predict_to_files(predictor, Slices(array, rgb=rgb), out / "v_labels.tif", out / f"v_probabilities{suffix}", None)
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - started}))
"""


def make_volume(path: Path, depth: int, size: int) -> None:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(path) as writer:  # uncompressed, one page per slice
        for _ in range(depth):
            writer.write(rng.integers(0, 65535, (size, size), dtype=np.uint16), contiguous=True)


def measure(source: Path, mode: str, classes: int, work: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=work))
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(out), mode, str(classes)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["tiff", "zarr"], choices=["tiff", "zarr"])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=arguments.work) as scratch:
        work = Path(scratch)
        results: dict[str, dict[int, dict[str, float]]] = {mode: {} for mode in arguments.modes}
        for depth in arguments.depths:
            source = work / f"volume_{depth}.tif"
            make_volume(source, depth, arguments.size)
            for mode in arguments.modes:
                results[mode][depth] = measure(source, mode, arguments.classes, work)
                row = results[mode][depth]
                print(
                    f"{mode:5s} depth {depth:4d}: peak RSS {row['maxrss_mb']:7.0f} MB  ({row['seconds']:.1f} s)",
                    flush=True,
                )
        first, last = min(arguments.depths), max(arguments.depths)
        for mode, rows in results.items():
            ratio = rows[last]["maxrss_mb"] / rows[first]["maxrss_mb"]
            verdict = "ok" if ratio <= 1.2 else "ABOVE 1.2x"
            print(f"{mode}: peak RSS at depth {last} / depth {first} = {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    main()
