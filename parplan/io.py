"""Output files: checked before any work, written last and all together.

A command calls `check_writable` on every output path before it starts, and hands all its
files to one `write_outputs` call at the end. `write_outputs` writes each file to a temp
file in the target folder, then renames them all into place; if any step fails it removes
its temp files and the files this call already renamed, so a failing command leaves none
of its outputs behind. (A rename replaces an existing file: a failure after that leaves
the old file gone, not restored.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from parplan.errors import ParplanError

__all__ = ["check_writable", "write_outputs"]


def check_writable(path: str | os.PathLike | None, flag: str) -> None:
    """Fail before any work unless `path` can be written: its folder exists, is a folder and
    is writable, and `path` itself is not a folder."""
    if path is None:
        return
    target = Path(path)
    folder = target.parent
    if str(path).endswith(("/", os.sep)) or target.is_dir():
        raise ParplanError(f"{flag} {str(path)!r} is a folder; give a file name inside it")
    if not folder.exists():
        raise ParplanError(f"{flag} {str(path)!r}: folder {str(folder)!r} does not exist; "
                           f"create it or pick another path")
    if not folder.is_dir():
        raise ParplanError(f"{flag} {str(path)!r}: {str(folder)!r} is a file, not a folder; pick another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ParplanError(f"{flag} {str(path)!r}: folder {str(folder)!r} is not writable; "
                           f"change its permissions or pick another folder")


def _write_error(path: str, err: OSError) -> ParplanError:
    reason = err.strerror or type(err).__name__
    return ParplanError(f"cannot write {path!r}: {reason}; check the folder exists and is writable, "
                        f"or pick another path (no output was written)")


def _temp_copy(path: str, data: bytes) -> str:
    """`data` in a new temp file beside `path`, with the mode a plain new file gets."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".parplan-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_outputs(files: dict[str, str | bytes]) -> None:
    """Write every file, or none of them: temp files first, then one rename each.

    An OSError (read-only folder, permission denied, a folder in the way, disk full)
    becomes a `ParplanError` naming the path, after everything this call wrote is removed.
    """
    for path in files:
        check_writable(path, "output")
    temps: dict[str, str] = {}
    renamed: list[str] = []
    current = ""
    try:
        for current, content in files.items():
            temps[current] = _temp_copy(current, content.encode() if isinstance(content, str) else content)
        for current, tmp in temps.items():
            os.replace(tmp, current)
            renamed.append(current)
    except BaseException as err:
        for leftover in [tmp for path, tmp in temps.items() if path not in renamed] + renamed:
            try:
                os.unlink(leftover)
            except OSError:
                pass
        if isinstance(err, OSError):
            raise _write_error(current, err) from None
        raise
