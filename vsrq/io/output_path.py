"""Checks on where output may go, and the temporary files that make writing it atomic.

Temporaries live next to the target (same filesystem) so the final `os.replace` is a rename,
never a copy: a reader of the target path sees either nothing/the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from vsrq.errors import OutputError


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)  # hard links
    return False


def check_target(path: str | os.PathLike[str], *, overwrite: bool, inputs: tuple[str, ...] = ()) -> str:
    """Absolute target path, or OutputError saying why vsrq must not write there."""
    target = os.path.abspath(os.fspath(path))
    for source in inputs:
        if _same_file(target, source):
            raise OutputError(f"{target}: output would overwrite the input video; choose another output path")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise OutputError(f"{target}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: output directory {directory} is not writable")
    if os.path.isdir(target):
        raise OutputError(f"{target}: is a directory")
    if os.path.lexists(target) and not overwrite:
        raise OutputError(f"{target}: file exists (pass overwrite to replace it)")
    return target


def make_temp_beside(target: str, tag: str) -> str:
    """Create an empty hidden temp file next to `target` that keeps its extension (format guessing)."""
    directory, name = os.path.split(target)
    stem, ext = os.path.splitext(name)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".vsrq-{tag}{ext}", dir=directory)
    except OSError as err:
        raise OutputError(f"{target}: cannot create a file in {directory} ({err.strerror or err})") from None
    os.close(fd)
    return temp


def remove_quietly(paths: list[str]) -> None:
    """Delete temporaries; used on every failure path, so it must never raise."""
    while paths:
        path = paths.pop()
        with contextlib.suppress(OSError):
            os.remove(path)


def _default_mode() -> int:
    """Permissions a normally created file would get (mkstemp's are owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def publish(temp: str, target: str) -> None:
    """Atomically move the finished temp file onto the target with ordinary file permissions."""
    try:
        os.chmod(temp, _default_mode())
        os.replace(temp, target)
    except OSError as err:
        raise OutputError(f"{target}: cannot move the finished file into place ({err.strerror or err})") from None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_free_space(target: str, needed: int) -> None:
    """Refuse to start a job whose output (by a high estimate) cannot fit beside the target."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell (some network filesystems); writing will report a full disk itself
    if needed > free:
        raise OutputError(f"{target}: not enough free space in {directory}: the job needs about {_gib(needed)} "
                          f"(segments and the final file), {_gib(free)} free; free some space, write elsewhere, "
                          "or pass --no-space-check")
