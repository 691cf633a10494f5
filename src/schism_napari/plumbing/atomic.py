"""Atomic, non-clobbering file output: write a temporary file beside the target, then rename.

A crash or a stop never leaves a half-written checkpoint, INI or TIFF behind, and user files
are never replaced unless the caller says so (run-folder files that the run itself owns).

A full disk (or quota) while writing is one :class:`DiskFullError` line naming the folder, the
file and the space it needs: the temporary file is removed and the previous file under the final
name, if any, is untouched. Libraries report a full disk in their own ways (torch's serializer
raises ``RuntimeError: ... unexpected pos 36736 vs 36640``), so the error's whole chain is read
for ENOSPC/EDQUOT, and a write failure without an errno counts as a full disk when the folder has
(next to) no space left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import SchismError


class OutputExistsError(SchismError):
    """The output file is already there and overwriting was not asked for."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch's zip writer (PyTorchStreamWriter) loses the errno: these are its texts for a failed write
_WRITE_FAILURE_TEXTS = ("unexpected pos", "file write failed", "failed writing")
# a write that failed without an errno, in a folder with less than this free, failed for want of space
_NEARLY_FULL = 1024**2


class DiskFullError(SchismError):
    """No space (or no quota) left while writing ``name`` in ``folder``; says what it needs."""

    def __init__(
        self,
        folder: Path,
        name: str,
        needed: int | None,
        free: int | None,
        reason: str = "no space left on the device",
        hint: str = "free some space there and run it again",
        written: int | None = None,
    ) -> None:
        self.folder, self.name, self.needed, self.free = Path(folder), name, needed, free
        self.reason, self.hint, self.written = reason, hint, written
        if needed is not None:
            need = f"it needs about {format_size(needed)}"
        elif written:
            need = f"it needs more than {format_size(written)}"
        else:
            need = "it needs more space"
        have = f", {format_size(free)} is free" if free is not None else ""
        super().__init__(f"{folder}: disk full ({reason}) writing {name}: {need}{have}; {hint}")

    def with_hint(self, hint: str) -> DiskFullError:
        """The same error ending with ``hint`` (what the caller kept, how to continue)."""
        return DiskFullError(self.folder, self.name, self.needed, self.free, self.reason, hint, self.written)

    def with_free_space(self) -> DiskFullError:
        """The same error saying how much is free now (call it once the partial output is gone:
        that is what the user actually has)."""
        if self.free is not None:
            return self
        free = free_space(self.folder)
        return DiskFullError(self.folder, self.name, self.needed, free, self.reason, self.hint, self.written)


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def free_space(folder: Path) -> int | None:
    """Bytes free for this user on the file system holding ``folder`` (None if it cannot be told)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT if ``error`` or an error it was raised from (``__cause__``/``__context__``)
    is a full disk: torch wraps the OSError of a file object's ``write`` in a RuntimeError."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        pending += [current.__cause__, current.__context__]
    return None


def full_disk_error(
    error: BaseException, target: Path, *, needed: int | None = None, written: int | None = None
) -> DiskFullError | None:
    """``error`` (raised while writing ``target``) as a :class:`DiskFullError`, or None when it is
    something else. Call it while the partial file still exists: without an errno, an almost empty
    file system is what tells a full disk from other write failures."""
    if isinstance(error, DiskFullError):
        return error
    folder = Path(target).parent
    number = disk_full_errno(error)
    if number is None:
        text = str(error)
        if not (isinstance(error, RuntimeError) and any(t in text for t in _WRITE_FAILURE_TEXTS)):
            return None
        free = free_space(folder)
        if free is None or free >= _NEARLY_FULL:
            return None
        number = errno.ENOSPC
    reason = "disk quota exceeded" if number == errno.EDQUOT else "no space left on the device"
    return DiskFullError(folder, Path(target).name, needed, None, reason, written=written)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    ``needed`` (bytes the file will take, if known) goes into the one-line error of a full disk."""
    target = Path(target)
    if not overwrite and target.exists():
        raise OutputExistsError(f"{target} already exists; not overwriting it (choose another output)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        full = full_disk_error(error, target, needed=needed)
        if full is not None:
            raise full.with_free_space() from None
        raise
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
    except Exception as error:
        full = full_disk_error(error, target, needed=needed, written=_size(temporary_path))
        if full is None:
            raise
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        raise full.with_free_space() from None
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


def atomic_write(
    target: Path, write: Callable[[Path], object], *, overwrite: bool = False, needed: int | None = None
) -> Path:
    with atomic_path(target, overwrite=overwrite, needed=needed) as temporary:
        write(temporary)
    return Path(target)


def atomic_write_text(target: Path, text: str, *, overwrite: bool = False) -> Path:
    data = text.encode("utf-8")
    return atomic_write(target, lambda p: p.write_bytes(data), overwrite=overwrite, needed=len(data))


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


def create_unique_folder(path: Path) -> Path:
    """Create ``path``, else ``path_2``, ``path_3``...: ``mkdir`` without ``exist_ok``, so two
    processes choosing a name at the same moment (two napari windows pressing Train within the
    same second) never end up sharing one folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, counter = path, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.name}_{counter}")
            counter += 1
