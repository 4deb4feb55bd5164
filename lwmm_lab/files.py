"""Safe file handling: atomic writes that never leave a half-written file, content hashes, and
what a file holds when it is not the data its name promises (a Git LFS pointer, a web page)."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from lwmm_lab.errors import LwmmError

_UMASK = os.umask(0)
os.umask(_UMASK)


def output_path(path: str | os.PathLike, what: str, *suffixes: str) -> Path:
    """``path`` as a :class:`Path` when it ends in one of ``suffixes``; else an
    :class:`LwmmError` naming it. Commands check their outputs up front, before the work."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise LwmmError(f"{path}: {what} is written as a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise LwmmError(f"{path}: a folder is there; {what} is written as a file")
    return path


def output_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`Path` when it is a folder or nothing yet; a file there is refused,
    naming it, before the work that would fill the folder fails on it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LwmmError(f"{path}: is a file, not a folder for {what}")
    return path


def refuse_overwrite(path: str | os.PathLike, protect: tuple[str | os.PathLike, ...]) -> None:
    """Raise :class:`LwmmError` when ``path`` is one of the input files ``protect``, or a file
    of an input folder (an smp ``save_pretrained`` checkpoint's weights): checked by every
    write, and by commands up front, before minutes of work that could not be saved."""
    for p in protect:
        if same_file(path, p):
            raise LwmmError(f"{path}: output is one of the inputs; refusing to overwrite it")
        inside = Path(path).resolve().is_relative_to(Path(p).resolve())
        if inside and Path(p).is_dir() and Path(path).exists():
            raise LwmmError(f"{path}: output is a file of the input {p}; refusing to overwrite it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    A crash or an exception leaves ``path`` untouched and removes the temporary file. ``protect``
    lists input files that must never be overwritten (a merge refusing to write over its inputs).
    """
    path = Path(path)
    refuse_overwrite(path, protect)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise LwmmError(f"{path}: cannot be written ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        try:
            os.replace(tmp_path, path)
        except OSError as e:  # a folder made there meanwhile
            raise LwmmError(f"{path}: cannot be written ({e.strerror or e})") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def data_dir() -> Path:
    """Where generated files go: ``$LWMM_DATA``, else the ``data/`` folder of the lwmm-lab
    checkout that holds the current folder (notebooks run from ``notebooks/``), else ``data``."""
    if os.environ.get("LWMM_DATA"):
        return Path(os.environ["LWMM_DATA"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "README.md").is_file() and (folder / "lwmm_lab").is_dir():
            return folder / "data"
    return Path("data")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (for manifests and reports)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (cached by path, size and modification time); of a folder
    (an smp ``save_pretrained`` checkpoint), of its files' names and digests, so that a cache
    keyed by content serves folders as it serves files. A missing path is an
    :class:`LwmmError` naming it."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise LwmmError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        text = "".join(f"{f.relative_to(path).as_posix()}:{sha256(f)}\n" for f in files)
        return hashlib.sha256(text.encode()).hexdigest()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)  # the files of a sweep's val sets on disk too
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (also through links), existing or not."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def stand_in(path: Path, what: str) -> str | None:
    """What a file holds in place of ``what`` (weights, an image), when its first bytes say:
    nothing, a Git LFS pointer (a repository cloned without ``git lfs pull``), a web page (a
    download that fetched a login or redirect page) or other text. None when they do not, or
    the file cannot be opened: the reader's own error then says what is wrong."""
    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError:
        return None
    if not head:
        return "the file is empty"
    if head.startswith(b"version https://git-lfs"):
        return f"it is a Git LFS pointer, not {what}; fetch the files with `git lfs pull`"
    if b"<html" in head.lower():
        return f"it is a web page, not {what}: the download fetched a page instead of the file"
    try:  # an incremental decoder: a character cut at byte 512 is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return "it holds only blank space"
    if all(c.isprintable() or c.isspace() for c in text):
        return f"it is text, not {what}: {text.strip().splitlines()[0][:60]!r}"
    return None
