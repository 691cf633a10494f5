"""``schism sample``: write the synthetic rock CT sample dataset."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Commands


def add_parser(commands: Commands) -> None:
    sample = commands.add_parser("sample", help="write the synthetic rock CT sample dataset")
    sample.add_argument("--out", required=True, type=Path)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--schism", action="store_true", help="also readable by the original SCHISM: 8-bit images, gray-level masks"
    )
    sample.set_defaults(handler=handle)


@dataclass(frozen=True)
class SampleOptions:
    out: Path
    seed: int
    schism: bool

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> SampleOptions:
        return cls(out=namespace.out, seed=namespace.seed, schism=namespace.schism)


def handle(namespace: argparse.Namespace) -> int:
    return run(SampleOptions.from_namespace(namespace))


def run(options: SampleOptions) -> int:
    from ..sample import write_sample

    files = write_sample(options.out, seed=options.seed, schism=options.schism)
    print(f"wrote the synthetic rock CT sample to {files.root}:")
    print(f"  dataset (SCHISM layout): {files.datasets}")
    print(f"  configuration:           {files.config}")
    print(f"  test stack:              {files.volume} (+ {files.volume_labels.name})")
    print(f"  non-square 2D image:     {files.image_2d} (+ {files.image_2d_labels.name})")
    if files.schism_test is not None:
        print(f"  SCHISM inference folder: {files.schism_test} (8-bit images, gray-level masks)")
    return 0
