"""Shared by the commands: the inference options, run folders and input files of ``predict`` and ``evaluate``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SchismError

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeAlias

    from ..workflows import InferenceOverrides, PredictRequest

    # what ``add_subparsers`` returns, handed to each command module's ``add_parser``
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile-size", type=int, help="tile side in image pixels (default: [Inference] or crop_size)")
    parser.add_argument("--overlap", type=float, help="tile overlap fraction (default: [Inference] overlap)")
    parser.add_argument("--halo", type=int, help="pixels shared by neighbouring tiles (default: from the network)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores other processes leave free)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    parser.add_argument("--planes", choices=("xy", "xyz"), help="stacks: xyz averages XY, XZ and YZ predictions")
    parser.add_argument("--voxel-ratio", type=float, help="Z voxel size / XY pixel size (default: from the file)")
    parser.add_argument(
        "--slab-depth", type=int, help="xyz: slices per slab held in memory (default: all; 64 with --zarr)"
    )
    parser.add_argument("--device", default="auto")


@dataclass(frozen=True)
class InferenceOptions:
    """The options :func:`add_inference_options` adds."""

    tile_size: int | None
    overlap: float | None
    halo: int | None
    threads: int | None
    batch_size: int | None
    tta: bool
    planes: str | None
    voxel_ratio: float | None
    slab_depth: int | None
    device: str

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> InferenceOptions:
        return cls(
            tile_size=namespace.tile_size,
            overlap=namespace.overlap,
            halo=namespace.halo,
            threads=namespace.threads,
            batch_size=namespace.batch_size,
            tta=namespace.tta,
            planes=namespace.planes,
            voxel_ratio=namespace.voxel_ratio,
            slab_depth=namespace.slab_depth,
            device=namespace.device,
        )

    def overrides(self) -> InferenceOverrides:
        """The inference options given on the command line, over each run's [Inference]."""
        from ..workflows import InferenceOverrides

        return InferenceOverrides(
            tile_size=self.tile_size,
            overlap=self.overlap,
            halo=self.halo,
            batch_size=self.batch_size,
            tta=self.tta,
            planes=self.planes,
            voxel_ratio=self.voxel_ratio,
        )


def predict_request(
    weights: list[Path], metric: str, inference: InferenceOptions, dataset: str | None = None
) -> PredictRequest:
    """The run folder(s) and the inference options of ``predict`` or ``evaluate``. ``dataset`` picks
    a SCHISM run's normalisation (its data_stats entry for that dataset)."""
    from ..workflows import PredictRequest

    return PredictRequest(
        runs=weights,
        metric=metric,
        dataset=dataset,
        overrides=inference.overrides(),
        device=inference.device,
        threads=inference.threads,
    )


def prediction_inputs(path: Path, list_image_files: Callable[[Path], list[Path]]) -> list[Path]:
    """The files ``--input`` names: one file, a folder of images, or SCHISM's inference folder."""
    if not path.exists():
        raise SchismError(f"--input {path}: no such file or folder")
    if path.is_dir() and path.suffix != ".zarr":
        folder = path / "images" if (path / "images").is_dir() else path
        files = list_image_files(folder) + sorted(folder.glob("*.zarr"))
        if not files:  # SCHISM's inference folder: <data>/<dataset>/images for every dataset
            for dataset in sorted(p for p in path.iterdir() if (p / "images").is_dir()):
                files.extend(list_image_files(dataset / "images"))
        if not files:
            raise SchismError(f"--input {path}: no images (.tif, .png, .zarr ...) in this folder")
        return files
    return [path]
