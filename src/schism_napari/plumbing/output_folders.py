"""The one place that opens output folders: created or refused up front, in one line each.

A folder that cannot be created or written (read-only parent, a file in the way) is reported
before any work starts, naming the option and the path; a folder this run created is removed
again when the run fails before it produced anything, so a failed command leaves no debris.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SchismError


def output_folder(path: Path, option: str = "--out") -> bool:
    """Make sure ``path`` is a folder this process can write into; return whether it was created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SchismError(f"{option} {path} is a file; give a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SchismError(f"{option} {path}: cannot create this folder ({_reason(error)})") from None
    check_writable(path, option)
    return created


def check_writable(folder: Path, option: str = "--out") -> None:
    """Try to create a file in ``folder``: permissions, read-only mounts and ACLs all show up."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".schism-write-test.", dir=folder)
    except OSError as error:
        raise SchismError(f"{option} {folder}: cannot write in this folder ({_reason(error)})") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def writable_parent(target: Path, option: str = "--out") -> None:
    """For a file output: its folder must exist (or be creatable) and be writable."""
    target = Path(target)
    parent = target.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SchismError(f"{option} {target}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SchismError(f"{option} {target}: cannot write in {probe} (permission denied)")


@contextlib.contextmanager
def removed_on_failure(folder: Path, created: bool, *, keep_if: tuple[str, ...] | None = None) -> Iterator[None]:
    """Remove ``folder`` when the block fails and this run created it: when it holds none of
    ``keep_if`` (e.g. a checkpoint worth resuming from), or, without ``keep_if``, when it holds
    nothing but empty folders (finished outputs of earlier inputs stay)."""
    try:
        yield
    except BaseException:
        folder = Path(folder)
        if created and folder.is_dir():
            if keep_if is None:
                for inner in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        inner.rmdir()  # only succeeds when empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            elif not any((folder / name).exists() for name in keep_if):
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
