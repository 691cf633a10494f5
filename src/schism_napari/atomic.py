"""Atomic, non-clobbering file output: write a temporary file beside the target, then rename.

A crash or a stop never leaves a half-written checkpoint, INI or TIFF behind, and user files
are never replaced unless the caller says so (run-folder files that the run itself owns).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SchismError


class OutputExistsError(SchismError):
    """The output file is already there and overwriting was not asked for."""


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``."""
    target = Path(target)
    if not overwrite and target.exists():
        raise OutputExistsError(f"{target} already exists; not overwriting it (choose another output)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with contextlib.suppress(OSError):  # file systems without permissions (some network mounts)
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp makes 0600; a user file follows the umask
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        if not overwrite:
            # link() fails if the target appeared meanwhile, so a concurrent writer is never clobbered
            try:
                os.link(temporary_path, target)
            except FileExistsError:
                raise OutputExistsError(f"{target} already exists; not overwriting it") from None
            except OSError:
                os.replace(temporary_path, target)  # file systems without hard links
        else:
            os.replace(temporary_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()


def current_umask() -> int:
    """The process umask, read from /proc where possible: os.umask() can only read it by setting
    it, which would race with other threads (the napari workers) creating files meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMPORARY_PATTERN = ".*.tmp"


def remove_debris(folder: Path) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files and folders left in ``folder`` by a killed writer; return them."""
    import shutil

    removed = []
    for path in Path(folder).glob(TEMPORARY_PATTERN):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def atomic_write(target: Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    with atomic_path(target, overwrite=overwrite) as temporary:
        write(temporary)
    return Path(target)


def atomic_write_text(target: Path, text: str, *, overwrite: bool = False) -> Path:
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"), overwrite=overwrite)


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``name_2.ext``, ``name_3.ext``...: never an existing file or folder."""
    path = Path(path)
    if not path.exists():
        return path
    stem, _, suffix = path.name.partition(".")
    suffix = f".{suffix}" if suffix else ""
    counter = 2
    while True:
        candidate = path.with_name(f"{stem}_{counter}{suffix}")
        if not candidate.exists():
            return candidate
        counter += 1
