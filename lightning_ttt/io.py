"""Small file helpers: every result file is written whole or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions ``open()`` would give a new file (``mkstemp`` makes 0600 ones)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The permissions ``mkdir()`` would give a new directory (``mkdtemp`` makes 0700 ones)."""
    return 0o777 & ~_umask()


# ``.NAME.PID.RANDOM.tmp``: a temporary names the process writing it, so a later writer can tell one
# that a killed process left behind (mkstemp's random part has no dots)
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_abandoned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders in ``folder`` whose writer is no longer running (a process
    killed while writing leaves one); returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or process_running(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def sibling_temporary_dir(path: str | os.PathLike) -> Path:
    """A new empty folder beside ``path`` (same file system, so it can be renamed into place), with the
    permissions ``mkdir()`` would give; abandoned temporaries there are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, default_dir_mode())
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it over ``path``.

    An exception leaves ``path`` as it was and no temporary file behind; a kill leaves ``path`` as it was
    and a temporary that the next write into the same folder removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (format from the suffix, e.g. ``.png``) and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip("."), dpi=dpi))
    finally:
        plt.close(fig)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file; a damaged file is a one-line ``ValueError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except SafetensorError as err:  # truncated or overwritten
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path} is damaged ({first}); write it again (e.g. ttt export)") from None


def yaml_problem(text: str) -> str | None:
    """Where and why ``text`` is not valid YAML (``line 3, column 12: did not find expected ','``), or None."""
    import yaml

    try:
        yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{getattr(err, 'problem', None) or type(err).__name__}"
    return None


def check_out_dir(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a non-empty results folder unless ``overwrite`` (FileExistsError, one line)."""
    path = Path(path)
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"--out {path} is not empty; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} is a file, not a folder")


@contextmanager
def replacing_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new sibling folder to write results into; on success it replaces ``path`` whole.

    ``path`` must be empty or absent unless ``overwrite``. An exception leaves ``path`` as it was and
    removes the new folder.
    """
    path = Path(path)
    check_out_dir(path, overwrite)
    tmp = sibling_temporary_dir(path)
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` is moved aside first and removed after."""
    if not path.exists():
        os.rename(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, old / path.name)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old / path.name, path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
