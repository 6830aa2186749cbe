"""Atomic outputs: write into a temporary sibling, rename on success.

An interrupted command leaves either the previous output or nothing that looks
complete (temporary siblings start with '.' and end with '.partial').
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from adaptkit.errors import InputError


def check_output(path: Path, overwrite: bool, flag: str = "-o/--output", is_dir: bool | None = None) -> Path:
    """Refuse an existing non-empty output unless `overwrite`; refuse, even with `overwrite`, a directory where
    a file is expected (`is_dir` False) or a file where a directory is (`is_dir` True): --overwrite replaces
    an output by one of its kind, never a directory's contents by a file."""
    path = Path(path)
    if path.exists() and is_dir is not None and path.is_dir() != is_dir:
        found, expected = ("a directory", "a file path") if path.is_dir() else ("a file", "a directory")
        raise InputError(f"{flag}: '{path}' is {found}; expected {expected} (--overwrite replaces an output of the same kind only)")
    if path.exists():
        if path.is_dir():
            if any(path.iterdir()) and not overwrite:
                raise InputError(f"{flag}: '{path}' exists and is not empty; pass --overwrite or choose another path")
        elif not overwrite:
            raise InputError(f"{flag}: '{path}' exists; pass --overwrite or choose another path")
    check_writable(path, flag)
    return path


def check_writable(path: Path, flag: str = "-o/--output") -> None:
    """Refuse, before any work, an output whose directory cannot be created or written (/proc, /sys,
    a read-only parent): the nearest existing ancestor must be a directory that takes a new file."""
    path = Path(path).expanduser().resolve()
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag}: '{ancestor}' is not a directory")
    try:  # a probe file, removed at once: permission bits alone miss read-only and virtual file systems
        fd, probe = tempfile.mkstemp(prefix=".adaptkit-write-test-", dir=ancestor)
    except OSError as exc:
        raise InputError(f"{flag}: cannot write '{path}': {ancestor} {_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "is not writable"
    if exc.errno == errno.EROFS:
        return "is on a read-only file system"
    return f"does not take new files ({exc.strerror or exc})"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(is_dir: bool) -> int:
    """The mode a plain open() (0666) or mkdir() (0777) gives under the current umask."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


def temp_sibling(path: Path, is_dir: bool) -> Path:
    """A fresh hidden `.NAME.*.partial` sibling of `path` with the mode a plain open()/mkdir() would give:
    mkstemp/mkdtemp create 0600/0700, which a rename would carry into the output (unreadable to others)."""
    path = Path(path)
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        name = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
        os.close(fd)
    os.chmod(name, plain_mode(is_dir))
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what is there (a dir is swapped in as whole)."""
    final = Path(final)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def _atomic(path: Path, overwrite: bool, flag: str, is_dir: bool) -> Iterator[Path]:
    path = check_output(Path(path), overwrite, flag, is_dir)
    tmp = temp_sibling(path, is_dir)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    replace_path(tmp, path)


def atomic_dir(path: Path, overwrite: bool = False, flag: str = "-o/--output") -> contextlib.AbstractContextManager[Path]:
    """A temporary sibling directory that becomes `path` when the block succeeds."""
    return _atomic(path, overwrite, flag, is_dir=True)


def atomic_file(path: Path, overwrite: bool = False, flag: str = "-o/--output") -> contextlib.AbstractContextManager[Path]:
    """A temporary sibling file path that becomes `path` when the block succeeds."""
    return _atomic(path, overwrite, flag, is_dir=False)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small text file atomically (no overwrite check: for files inside our own outputs)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
