"""Claiming a run folder (or an output file) for one process, so two runs never write into one.

Two ``schism train`` started with the same ``--out`` (a job array's classic slip) would both
pass the "folder is new or empty" check and interleave their checkpoints. A claim is a lock file
in the folder, ``.schism.lock``, holding the owner's pid, host name, start time and command:

- it appears atomically and complete: written under a temporary name, then ``link()``-ed onto the
  lock's name, which fails when another process got there first (also over NFS);
- its owner holds an exclusive ``flock`` on it for as long as the claim lasts, so two processes
  recovering the same stale lock cannot both win;
- a lock whose owner is gone (same host, pid no longer alive: a killed run) is stale and taken
  over; a lock from another host cannot be checked from here and is refused, naming the file to
  delete if that process has ended;
- it is removed when the claim ends, on errors and Ctrl-C too (a ``with`` block).

Claims nest within one thread (the CLI claims ``--out`` before reading the data, then the
Trainer, which the napari dock also uses, claims the same folder again); another thread of the
same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SchismError

LOCK_FILE = ".schism.lock"
_ATTEMPTS = 5


class FolderInUse(SchismError):
    """Another live process (or another thread of this one) holds the claim."""


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: str = "?"
    command: str = ""

    @classmethod
    def me(cls) -> Owner:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"), command[:300])

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started, "command": self.command})

    @classmethod
    def from_text(cls, text: str) -> Owner | None:
        try:
            found = json.loads(text)
            return cls(
                int(found["pid"]), str(found["host"]), str(found.get("started", "?")), str(found.get("command", ""))
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started}"


@dataclass
class _Held:
    fd: int
    inode: int
    thread: int
    count: int = 1


_held: dict[str, _Held] = {}
_registry_lock = threading.Lock()


@contextlib.contextmanager
def claim(folder: Path, *, name: str = LOCK_FILE, what: str = "folder", target: Path | None = None) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process while the block runs.

    ``name`` is the lock file's name in ``folder``: ``.schism.lock`` for a whole run folder,
    ``.<output>.lock`` for one output file (``target``, named in messages). Refused with one
    :class:`FolderInUse` line when a live process holds it. Yields the lock file's path."""
    folder = Path(folder)
    lock = folder / name
    subject = f"{target if target is not None else folder}: this {what}"
    key = os.path.realpath(lock)
    me = threading.get_ident()
    with _registry_lock:
        held = _held.get(key)
        if held is not None:
            if held.thread != me:
                raise FolderInUse(f"{subject} is in use by another run in this process; wait for it to end")
            held.count += 1
    if held is not None:
        try:
            yield lock
        finally:
            _release(key)
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SchismError(f"{folder}: cannot create this folder ({error.strerror or error})") from None
    try:
        fd = _acquire(lock, subject, what)
    except OSError as error:  # a full disk or a read-only folder while writing the lock: one line
        raise SchismError(f"{lock}: cannot create this lock file ({error.strerror or error})") from None
    with _registry_lock:
        _held[key] = _Held(fd, os.fstat(fd).st_ino, me)
    try:
        yield lock
    finally:
        _release(key)


def output_lock_name(target: Path) -> str:
    return f".{Path(target).name}.lock"


@contextlib.contextmanager
def claimed_outputs(targets: Iterable[Path]) -> Iterator[None]:
    """Hold output files (``.<name>.lock`` beside each) while the block runs: commands writing
    other files into the same folder (a job array predicting one image each) go on side by side,
    one writing the same file is refused at once instead of failing after all its work."""
    with contextlib.ExitStack() as stack:
        for target in targets:
            target = Path(target)
            stack.enter_context(claim(target.parent, name=output_lock_name(target), what="output", target=target))
        yield


def _release(key: str) -> None:
    with _registry_lock:
        held = _held[key]
        held.count -= 1
        if held.count:
            return
        del _held[key]
    with contextlib.suppress(OSError):
        if os.stat(key).st_ino == held.inode:  # still our lock (not removed with its folder, not replaced)
            os.unlink(key)
    os.close(held.fd)  # closing drops the flock


def _acquire(lock: Path, subject: str, what: str) -> int:
    """An open descriptor on ``lock``, flocked, naming this process; raises FolderInUse."""
    me = Owner.me()
    for _ in range(_ATTEMPTS):
        fd = _create(lock, me)
        if fd is not None:
            return fd
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile: try to create it again
        try:
            if not _try_flock(fd):  # its owner is alive and holds it
                raise FolderInUse(_in_use(subject, what, lock, _read_owner(fd)))
            replaced = os.fstat(fd).st_ino != _inode(lock)  # removed (maybe recreated) since our open
            if not replaced:
                owner = _read_owner(fd)
                if owner is not None and (owner.host != me.host or (owner.pid != me.pid and _alive(owner.pid))):
                    raise FolderInUse(_in_use(subject, what, lock, owner))
                # stale: its owner died (killed, crashed) on this host; take it over in place, under our flock
                os.ftruncate(fd, 0)
                os.pwrite(fd, me.to_json().encode("utf-8"), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise FolderInUse(f"{subject} is being claimed by other processes at the same time; try again")


def _create(lock: Path, me: Owner) -> int | None:
    """Create ``lock`` holding ``me``, atomically and complete; None if it already exists."""
    temporary = lock.with_name(f"{lock.name}.{me.pid}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    linked, no_links = False, False
    try:
        os.write(fd, me.to_json().encode("utf-8"))
        _try_flock(fd)  # flocked before it has its name: nobody can see it unlocked
        try:
            os.link(temporary, lock)
            linked = True
        except FileExistsError:
            pass
        except OSError:  # file systems without hard links
            no_links = True
    finally:
        if not linked:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    if linked:
        return fd
    return _create_exclusive(lock, me) if no_links else None


def _create_exclusive(lock: Path, me: Owner) -> int | None:
    """Exclusive create, flock, then write: for file systems without hard links."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        _try_flock(fd)
        os.write(fd, me.to_json().encode("utf-8"))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)
        raise
    return fd


def _try_flock(fd: int) -> bool:
    """Take the exclusive flock without waiting; False if another open file holds it. A file system
    without flock (some network mounts) counts as success: the pid check alone decides then."""
    try:
        import fcntl
    except ImportError:  # Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _read_owner(fd: int) -> Owner | None:
    with contextlib.suppress(OSError):
        return Owner.from_text(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    return None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True  # cannot tell (e.g. Windows): keep the lock
    return True


def _in_use(subject: str, what: str, lock: Path, owner: Owner | None) -> str:
    if owner is None:
        return f"{subject} is in use by another schism process; wait for it to end or choose another {what}"
    text = f"{subject} is in use by another schism run ({owner.describe()})"
    if owner.host != socket.gethostname():
        return text + f"; wait for it to end, or delete {lock} if that process has ended"
    return text + f"; wait for it to end or choose another {what}"
