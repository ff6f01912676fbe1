"""Output files are written last and whole: a failing command leaves no partial file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from parplan.errors import ParplanError

__all__ = ["check_writable", "write_outputs"]


def check_writable(path: str | os.PathLike | None, flag: str) -> None:
    """Fail before any work if `path`'s folder does not exist."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise ParplanError(f"{flag} {path}: folder {str(folder)!r} does not exist; create it or pick another path")


def write_outputs(files: dict[str, str | bytes]) -> None:
    """Write each file atomically (temp file + rename) after everything was computed."""
    for path in files:
        check_writable(path, "output")
    for path, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        folder = Path(path).parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".parplan-", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
