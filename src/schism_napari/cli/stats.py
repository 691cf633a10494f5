"""``schism stats``: write data_stats.json (normalisation) for a dataset folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SchismError

if TYPE_CHECKING:
    from .common import Commands


def add_parser(commands: Commands) -> None:
    stats = commands.add_parser("stats", help="write data_stats.json (normalisation) for a dataset folder")
    stats.add_argument("--data", required=True, type=Path)
    stats.add_argument("--out", type=Path, help="where to write (default: data_stats.json in the dataset folder)")
    stats.set_defaults(handler=handle)


@dataclass(frozen=True)
class StatsOptions:
    data: Path
    out: Path | None

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> StatsOptions:
        return cls(data=namespace.data, out=namespace.out)


def handle(namespace: argparse.Namespace) -> int:
    return run(StatsOptions.from_namespace(namespace))


def run(options: StatsOptions) -> int:
    from ..data.dataset import STATS_FILE, folder_stats
    from ..data.discovery import discover_datasets
    from ..data.normalization import write_stats_file
    from ..plumbing.output_folders import writable_parent

    stats_folder, folders = discover_datasets(options.data, require_masks=False)
    target = options.out or stats_folder / STATS_FILE
    if target.exists():
        hint = "choose another --out" if options.out is not None else "delete it or give --out FILE"
        raise SchismError(f"{target} already exists; not overwriting it ({hint})")
    writable_parent(target, "--out" if options.out is not None else "--data")
    stats = folder_stats(folders)
    write_stats_file(target, stats)
    for name, value in stats.items():
        mean, std = value.to_json()
        print(f"{name}: mean {mean}, std {std}")
    print(f"wrote {target}")
    return 0
