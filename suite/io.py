"""Atomic file writes: a reader never sees half a report.

Every file the suite writes goes to a temporary name in the target folder and is renamed
into place; the result has mode 0644 (``tempfile.mkstemp`` would leave 0600, which hides
a report from every other user of a shared machine).

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
    >>> atomic_write_text(path, "hello")
    >>> open(path).read(), oct(os.stat(path).st_mode & 0o777)
    ('hello', '0o644')
"""

import os
import tempfile
from collections.abc import Callable

__all__ = ["FILE_MODE", "atomic_write", "atomic_write_text"]

FILE_MODE = 0o644


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then give the file mode 0644 and rename it to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)
