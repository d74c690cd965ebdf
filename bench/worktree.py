"""An earlier commit's code, checked out beside this one for side-by-side runs (timings, numbers)."""
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def checkout(commit):
    """A temporary git worktree of `commit`, removed afterwards (shares this checkout's object store)."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "baseline"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT,
                               capture_output=True, text=True)
        if added.returncode:
            raise UserError(f"--baseline {commit} is not a commit of this checkout; pass one from git log")
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
