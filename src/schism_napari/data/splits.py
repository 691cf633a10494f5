"""Train/validation/test split with SCHISM's meaning, and its ``*_indices.txt`` files.

``num_samples`` images (slices) are used for training + validation, of which ``val_split`` is
the TRAINING fraction; the remaining images form the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SegmentationData

INDEX_FILES = {"train": "train_indices.txt", "val": "val_indices.txt", "test": "test_indices.txt"}


@dataclass
class Split:
    train: list[int]
    val: list[int]
    test: list[int]

    def part(self, name: str) -> list[int]:
        if name == "all":
            return self.train + self.val + self.test
        return getattr(self, name)


def make_split(count: int, num_samples: int, val_split: float, seed: int | None) -> Split:
    order = np.random.default_rng(seed).permutation(count).tolist()
    used = min(num_samples, count)
    n_train = min(used, max(1, int(round(val_split * used, 6))))
    return Split(sorted(order[:n_train]), sorted(order[n_train:used]), sorted(order[used:]))


def write_split(run_dir: Path, data: SegmentationData, split: Split, *, overwrite: bool = False) -> None:
    from ..plumbing.atomic import atomic_write_text

    for part, filename in INDEX_FILES.items():
        lines = [f"{data.samples[p].dataset}, {data.samples[p].index}" for p in split.part(part)]
        atomic_write_text(run_dir / filename, "".join(line + "\n" for line in lines), overwrite=overwrite)


def read_split(run_dir: Path, data: SegmentationData) -> Split:
    lookup = data.position_of()
    parts: dict[str, list[int]] = {}
    for part, filename in INDEX_FILES.items():
        path = Path(run_dir) / filename
        if not path.is_file():
            raise DataError(f"{path}: missing; the run folder is incomplete")
        positions = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                dataset, index = (v.strip() for v in line.rsplit(",", 1))
                positions.append(lookup[(dataset, int(index))])
            except (ValueError, KeyError):
                raise DataError(
                    f"{path}: line {number} ({line.strip()!r}) names no image of this dataset; "
                    "was the run trained on other data?"
                ) from None
        parts[part] = positions
    return Split(parts["train"], parts["val"], parts["test"])
