"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a truncated support set, checkpoint or result."""
import json
import os
from pathlib import Path

import torch

from utils.errors import UserError


def _atomic_write(path, write):
    """Call write(binary_file) on a temp file next to path, then rename it over path in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write '{path}' ({exc.strerror or exc}); choose a writable output location")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
