"""Atomic file writes: a crash, Ctrl-C or full disk mid-write never leaves a truncated support set, checkpoint,
figure or result, and never replaces an earlier file with a broken one.

Each file is first written to `.{name}.{pid}.tmp` next to it (same folder, so the rename is atomic). A process
killed mid-write (kill -9, power loss) cannot remove its temp file; the next write to the same path does, once
that pid is no longer alive. Inside `all_or_nothing()` the renames wait until the whole block has succeeded, so
a run that fails halfway leaves its earlier outputs as they were instead of a mix of old and new files.
"""
import errno
import fcntl
import glob
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.errors import UserError

_staged = None  # {path: temp file} inside all_or_nothing()


def temp_path(path):
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def pid_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(path):
    """Delete temp files of path whose writer has died."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.tmp")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) > 0 and not pid_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def write_file(tmp, data):
    """The one place bytes reach the disk (tests replace it to simulate a full disk)."""
    with open(tmp, "wb") as f:
        f.write(data)


def write_error(path, exc):
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"disk full while writing '{path}'; free some space and rerun (earlier files are intact: "
                         "nothing was replaced)")
    return UserError(f"cannot write '{path}' ({exc.strerror or exc}); choose a writable output location")


def atomic_write_bytes(path, data):
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        write_file(tmp, data)
        if _staged is None:
            os.replace(tmp, path)
        else:
            _staged[path] = tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def all_or_nothing():
    """Atomic writes inside the block replace their targets only when the block succeeds; on an error or
    Ctrl-C every staged temp file is removed and no target is touched."""
    global _staged
    if _staged is not None:
        raise RuntimeError("all_or_nothing() blocks do not nest")
    _staged = {}
    try:
        yield
        for path, tmp in list(_staged.items()):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise write_error(path, exc) from None
            del _staged[path]
    finally:
        for tmp in _staged.values():
            tmp.unlink(missing_ok=True)
        _staged = None


def read_torch_file(path, what, missing, unreadable):
    """torch.load of tensors only, onto the CPU. A missing or unreadable file is one line naming it as `what`,
    followed by the fix (`missing` or `unreadable`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip (or, before 1.6, a pickle)
            raise UserError(f"{what} '{path}' is not a PyTorch file (torch.save writes a zip archive; this one starts "
                            f"with {head!r}); {unreadable}")
        raise UserError(f"{what} '{path}' is damaged or holds more than tensors ({type(exc).__name__}); {unreadable}")


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path):
    """Serialised in memory first, so the disk is written in one place (write_file) with one error path."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def missing_folders(folder):
    """The folders that creating folder would create, deepest first: what to remove again if it stays empty."""
    return [p for p in [Path(folder), *Path(folder).parents] if not p.exists()]


LOCK_NAME = ".run.lock"
_locks = []  # (open lock file, folder, folders created for it) held by this process


def lock_folder(folder, holder):
    """Lock folder until release_folders(), so two runs never write into one folder at once; holder (e.g. the
    command) is what a second run is told. An flock: the kernel releases it when the process ends, also when it
    is killed, so a lock is never left stuck."""
    folder = Path(folder)
    created = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"'{folder}' is being written by another run ({other}); wait for it to end or use "
                            "another folder") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed this file while we waited for it: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}: {holder}\n")
    handle.flush()
    _locks.append((handle, folder, created))


def release_folders():
    """Unlock every folder this process locked and remove its lock file; a folder left empty (a run that failed
    before writing) is removed with the folders created for it, so a failed run leaves no empty folder."""
    while _locks:
        handle, folder, created = _locks.pop()
        (folder / LOCK_NAME).unlink()  # before the unlock, so a waiting run sees it gone and locks a new file
        handle.close()  # closing releases the flock
        if not any(folder.iterdir()):
            for empty in created:  # deepest first
                empty.rmdir()
