"""The two zarr calls whose spelling differs between zarr 2 and zarr 3.

Python 3.10 installs zarr 2 (zarr 3 needs 3.11; see pyproject.toml), 3.11 and newer zarr 3.
Reading (``zarr.open``, ``zarr.open_array``, ``.attrs``) is the same in both; creating a group in
zarr format 2 (what OME-NGFF 0.4 readers expect) and an array in it is not. With zarr 3 these are
exactly the zarr 3 calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import zarr

Mode = Literal["r", "r+", "a", "w", "w-"]


def _zarr_3() -> bool:
    import zarr

    return int(zarr.__version__.split(".")[0]) >= 3


def open_v2_group(path: str | Path, mode: Mode = "w-") -> Any:
    """``zarr.open_group(path, mode=mode, zarr_format=2)``; zarr 2 writes format 2 without being asked."""
    import zarr

    if _zarr_3():
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def create_array(group: zarr.Group, name: str, **kwargs: Any) -> Any:
    """``group.create_array(name, ...)`` (zarr 3); zarr 2 calls it ``create_dataset`` with the same
    ``shape``, ``chunks``, ``dtype`` and ``fill_value``."""
    if _zarr_3():
        return group.create_array(name, **kwargs)
    return group.create_dataset(name, **kwargs)
