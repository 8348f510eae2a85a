"""Atomic writers used by every layer: a reader never sees half a file, and a run killed while
writing leaves the previous version intact (temporary file in the same folder, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _write_atomic(path: str | Path, write, mode: str) -> None:
    """Write through ``write(handle)`` into a temporary file beside ``path``, then rename it over
    ``path``. A disk that fills (or any OSError) ends in StableFFError naming the file, with the
    temporary file removed and the previous version of ``path`` unchanged."""
    from stableff.errors import StableFFError

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            kept = "the previous version is unchanged" if path.exists() else "nothing was written"
            raise StableFFError(f"{path}: cannot write ({error.strerror or error}); {kept}") from None
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` atomically."""
    _write_atomic(path, lambda handle: handle.write(text), "w")


def write_json_atomic(data, path: str | Path) -> None:
    """JSON (indented) written atomically."""
    write_text_atomic(json.dumps(data, indent=2), path)


def save_torch_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (checkpoints). Serialised in memory first: torch's
    writer turns a full disk into an unspecific RuntimeError, a plain write into ENOSPC."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_atomic(path, lambda handle: handle.write(buffer.getbuffer()), "wb")


def copy_file_atomic(source: str | Path, path: str | Path) -> None:
    """A copy of the file ``source`` written to ``path`` atomically."""
    import shutil

    with open(source, "rb") as original:
        _write_atomic(path, lambda handle: shutil.copyfileobj(original, handle), "wb")


def read_json(path: str | Path):
    """The JSON content of ``path``, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def check_output_file(path, inputs=(), what: str = "output file") -> Path:
    """Refuse, before any work, an output file that cannot be written: a directory, a path under an
    existing file, an unwritable folder, or one of the inputs (which it would overwrite)."""
    from stableff.errors import StableFFError

    path = Path(path)
    if path.is_dir():
        raise StableFFError(f"{path}: the {what} is an existing directory")
    resolved = _resolved(path, what)
    for spec in inputs:
        if spec is not None and Path(str(spec)).exists() and Path(str(spec)).resolve() == resolved:
            raise StableFFError(f"{path}: the {what} is also an input file (it would be overwritten)")
    _check_folder(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise StableFFError(f"{path}: the {what} is not writable")
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    from stableff.errors import StableFFError

    path = Path(path)
    _resolved(path, what)
    if path.exists() and not path.is_dir():
        raise StableFFError(f"{path}: the {what} is an existing file, not a folder")
    _check_folder(path, what)
    return path


def _resolved(path: Path, what: str) -> Path:
    """``path`` with its symbolic links followed; a loop or a link to nowhere is refused by name."""
    from stableff.errors import StableFFError

    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a loop, 3.13 OSError (ELOOP)
        raise StableFFError(f"{path}: the {what} is (or lies under) a symbolic link loop") from None
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            raise StableFFError(f"{path}: the {what} is (or lies under) a symbolic link to a missing target ({link} -> {os.readlink(link)})")
    return resolved


def _check_folder(folder: Path, what: str) -> None:
    from stableff.errors import StableFFError

    existing = folder
    while not existing.exists():  # the nearest existing ancestor decides whether it can be created
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise StableFFError(f"{folder}: cannot create the {what} here ({existing} is a file)")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise StableFFError(f"{folder}: cannot write the {what} here ({existing} is not writable)")
