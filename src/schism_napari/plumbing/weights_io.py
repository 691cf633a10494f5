"""Weight files in and out: the one place that calls ``torch.save`` and ``torch.load``.

Loading is ``torch.load(weights_only=True)`` for every file a user can hand over (run folders of
this project and of SCHISM, ensemble members, ``[Model] encoder_weights``), and a refusal is one
line of ours: torch's own text runs over a dozen lines and tells the user how to load the file
unsafely. Saving is atomic (:mod:`.atomic`) and goes through a Python file object, so that a full
disk reaches us as ENOSPC: torch's own file writer only says ``unexpected pos 36736 vs 36640``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SchismError
from .atomic import atomic_path

# bytes a torch zip file adds to the tensors it holds (headers, pickled structure), for the estimate
_ARCHIVE_OVERHEAD = 64 * 1024
_BLOCKED_GLOBAL = re.compile(r"GLOBAL (\S+?)[ :]|Unsupported global: GLOBAL (\S+)")


def state_bytes(state: Any) -> int:
    """About the bytes ``torch.save(state)`` writes: its tensors' data plus the archive's overhead."""
    import torch

    total, seen, pending = _ARCHIVE_OVERHEAD, set(), [state]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, dict):
            pending += list(item.values())
        elif isinstance(item, list | tuple):
            pending += list(item)
    return total


def save_torch_file(path: Path, state: Any, *, overwrite: bool = True) -> None:
    """``torch.save`` under a temporary name, renamed when complete; a full disk is one
    :class:`~schism_napari.plumbing.atomic.DiskFullError` line and the previous file stays as it was."""
    import torch

    # a file object, not the path: its OSError (ENOSPC) survives as the context of torch's RuntimeError
    with (
        atomic_path(Path(path), overwrite=overwrite, needed=state_bytes(state)) as temporary,
        open(temporary, "wb") as file,
    ):
        torch.save(state, file)


def load_torch_file(path: Path, what: str = "weights file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any refusal is one :class:`SchismError`
    line naming ``path`` (and ``what``, e.g. "[Model] encoder_weights")."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SchismError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SchismError(f"{path}: is a folder, not a {what}") from None
    except pickle.UnpicklingError as error:
        raise SchismError(unsafe_or_damaged(path, what, str(error))) from None
    except Exception as error:
        raise SchismError(f"{path}: not a readable {what} ({type(error).__name__}: {first_line(error)})") from None


def unsafe_or_damaged(path: Path, what: str, text: str) -> str:
    """Our line for torch's weights_only refusal: a file pickling Python objects (naming the first
    one, e.g. ``posix.system``) is unsafe; anything else the unpickler rejects is damaged."""
    found = _BLOCKED_GLOBAL.search(text)
    if found or "global" in text.lower():
        name = f" ({found.group(1) or found.group(2)})" if found else ""
        return (
            f"{path}: not a plain {what}: it holds Python objects{name}, which could run code when loaded; "
            "refusing to load it"
        )
    return f"{path}: not a readable {what} (damaged, or not saved by torch)"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
