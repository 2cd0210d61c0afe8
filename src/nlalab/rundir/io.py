"""Run-directory file I/O, used by every writer and reader in nlalab.

Whole files are written to a temp file beside the target, fsynced and renamed (a kill leaves the old
file or the new one, never half of one). Incremental outputs are JSONL appended one batch at a time
and fsynced; :func:`read_jsonl` with ``repair=True`` cuts a torn last line left by a crash, so a
resumed run has no duplicated or lost rows. Records are split on ``\\n`` only: U+2028 and U+0085 may
stand raw inside a record. :func:`dir_lock` is the one lock (the ``filelock`` package: flock on
POSIX, msvcrt on Windows) that makes a second writer wait or refuse.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from nlalab.errors import FileFault, NLALabError

TMP_PREFIX = "."
TMP_MARK = ".tmp"


def _umask() -> int:
    cur = os.umask(0)
    os.umask(cur)
    return cur


def _fault(path: Path, e: OSError) -> NLALabError:
    """An OSError while writing, as one line that says what to do."""
    if e.errno == errno.ENOSPC:
        return NLALabError(f"{path}: no space left on the device. Fix: free space and rerun the same command; "
                           "finished stages are kept and resume.")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return NLALabError(f"{path}: cannot write here ({e.strerror}). Fix: choose a writable --out, or fix the "
                           "directory's permissions; nothing already written was lost.")
    return NLALabError(f"{path}: {e.strerror or e}. Fix: check the file system and rerun; finished stages resume.")


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_MARK}{os.getpid()}")


def clean_tmp(directory: Path) -> list[Path]:
    """Remove temp files a killed writer left in ``directory`` (and its subfolders); returns them."""
    gone = []
    d = Path(directory)
    if not d.is_dir():
        return gone
    for p in d.rglob(f"{TMP_PREFIX}*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _replace(tmp: Path, path: Path) -> None:
    # mkstemp-like files are 0600; results must honour the user's umask like any other file they write
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _fault(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def read_json(path: Path, fix: str = "rerun the command that wrote it") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NLALabError(f"{path}: not found. Fix: {fix}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise NLALabError(f"{path}: malformed JSON{where}. Fix: {fix}.") from None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (how a scorer section records the samples.jsonl it was computed from)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_save_tensors(path: Path, tensors: dict, metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _fault(path, e) from None


def load_tensors(path: Path, fix: Optional[str] = None) -> tuple[dict, dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a truncated or corrupt file is one line
    naming the file and ``fix``."""
    from safetensors import safe_open

    path = Path(path)
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except FileNotFoundError:
        raise NLALabError(f"{path}: not found. Fix: {fix or 'rerun the command that writes it'}.") from None
    except Exception as e:  # safetensors raises its own error types for a bad header or short file
        raise NLALabError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0][:120]}). "
                          f"Fix: {fix or 'delete it and rerun the command that writes it'}.") from None
    return out, meta


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, jsonl_text(rows))


def read_jsonl(path: Path, repair: bool = False, missing_ok: bool = False) -> list[dict]:
    """Every record of a JSONL file.

    ``repair=True`` (append-only logs that a crash may have torn): a bad or unterminated last record is
    cut off the file. Otherwise a malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise NLALabError(f"{path}: not found. Fix: rerun the command that writes it.") from None
    rows: list[dict] = []
    good = start = 0
    lineno = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        end = len(data) if nl < 0 else nl
        line = data[start:end]
        lineno += 1
        if line.strip():
            try:
                if nl < 0 and repair:
                    raise ValueError("unterminated")
                rows.append(json.loads(line))
            except ValueError as e:
                if repair:
                    break
                msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                raise NLALabError(f"{path} line {lineno}: malformed JSON ({msg}). Fix: delete the file and rerun "
                                  "the command that writes it.") from None
        if nl < 0:
            good = len(data)
            break
        good = start = nl + 1
    if repair and good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


class JsonlLog:
    """An append-only JSONL log; :meth:`read` repairs a torn tail left by a crash mid-write."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        return read_jsonl(self.path, repair=True, missing_ok=True)

    def append(self, rows: Iterable[dict]) -> None:
        payload = jsonl_text(rows)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _fault(self.path, e) from None


LOCK_NAME = ".nlalab.lock"


@contextmanager
def dir_lock(directory: Path, wait: Optional[float] = 0.0, what: str = "nlalab") -> Iterator[None]:
    """Hold ``directory``'s lock. ``wait`` seconds (None: forever) before refusing with one line that
    says which process holds it. The lock file records the holder's pid and command."""
    from filelock import FileLock, Timeout

    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fault(d, e) from None
    lock_path = d / LOCK_NAME
    info = d / (LOCK_NAME + ".who")
    lock = FileLock(str(lock_path), timeout=-1 if wait is None else wait)
    try:
        lock.acquire()
    except Timeout:
        who = info.read_text(encoding="utf-8").strip() if info.is_file() else "another process"
        raise NLALabError(f"{d} is in use by {who}. Fix: wait for it to finish (or stop it), or choose "
                          "another --out.") from None
    except OSError as e:
        raise _fault(lock_path, e) from None
    try:
        try:
            info.write_text(f"pid {os.getpid()} ({what})\n", encoding="utf-8")
        except OSError:
            pass
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()


# Largest safetensors header read (a bigger claim means a corrupt length field).
_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors(file, fix: str = "re-download or rebuild the file") -> dict:
    """The JSON header of a safetensors file, after checking that the file is whole.

    Reads 8 bytes and the header only (cheap even for a 50 GB shard): the file size must equal
    8 + header length + the end of the last tensor's data, so a truncated download, a file cut by a full
    disk or bytes of another format are found before any weights load. Raises :class:`FileFault`.
    """
    import json
    import struct

    f = Path(file)
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            raw = fh.read(n) if n is not None and 0 < n <= min(_MAX_HEADER, size - 8) else None
    except FileNotFoundError:
        raise FileFault(str(f), "file", "no such file", "a safetensors weight file", fix) from None
    except OSError as e:
        raise FileFault(str(f), "file", f"unreadable ({e.strerror})", "a readable file", fix) from None
    if raw is None:
        found = f"{size} bytes" if n is None else f"a header length of {n} bytes in a {size}-byte file"
        raise FileFault(str(f), "safetensors header", found, "8 bytes of header length and a JSON header",
                        f"the file is truncated or not safetensors; {fix}")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        raise FileFault(str(f), "safetensors header", "bytes that are not a safetensors JSON header",
                        "a JSON object of tensors with data_offsets", f"the file is corrupt; {fix}") from None
    want = 8 + n + max(ends, default=0)
    if size != want:
        what = "truncated" if size < want else "longer than its header says (corrupt)"
        raise FileFault(str(f), "file size", f"{size} bytes ({what})", f"{want} bytes (header + tensor data)", fix)
    return header
