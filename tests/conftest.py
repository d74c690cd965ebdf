"""Make the repository importable from tests, locate the shared real data (../shared) and run the CLIs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "mvtec-mini"


@pytest.fixture(scope="session")
def data_root():
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


def run_cli(script, *args, check=False, env=None):
    """Run an entry point of the repository as a user would; with check, fail showing its stderr."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_ok(script, *args, env=None):
    return run_cli(script, *args, check=True, env=env)


def run_here(script, *args):
    """Run an entry point in this process, as its run_main would (so a test can monkeypatch what it calls,
    e.g. to simulate a full disk); returns what run_cli returns: returncode, stdout, stderr."""
    import importlib.util
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO
    from types import SimpleNamespace

    from utils.cli import run_main
    spec = importlib.util.spec_from_file_location(f"entry_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err, code = StringIO(), StringIO(), 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            run_main(lambda: module.run(module.parse_args([str(a) for a in args])))
        except SystemExit as exc:
            code = exc.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_one_line_error(result, *fragments, code=2, prefix="error: "):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def temp_files(folder):
    """Temp files of utils.io's atomic writes left anywhere under folder."""
    return [p for p in files_under(folder) if p.name.endswith(".tmp")]


@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written into, even by root (chmod alone does not stop root: chattr +i does)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr: cannot make a read-only folder")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def copy_category(data_root, name, dst, train=None, test=None):
    """A copy of a real category under dst: the first `train` normal images and, per test folder, the first
    `test` images with their masks (None: all)."""
    import shutil
    src = data_root / name
    tests = sorted((src / "test").iterdir()) if (src / "test").is_dir() else []
    for folder in [src / "train" / "good", *tests]:
        kept = sorted(folder.iterdir())[:train if folder.parent.name == "train" else test]
        target = dst / name / folder.relative_to(src)
        target.mkdir(parents=True)
        for image in kept:
            shutil.copy(image, target / image.name)
            mask = src / "ground_truth" / folder.name / f"{image.stem}_mask.png"
            if folder.parent.name == "test" and mask.is_file():
                (dst / name / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, dst / name / "ground_truth" / folder.name / mask.name)
    return dst / name


def full_disk(monkeypatch, after=0):
    """Simulate a disk that fills up: after `after` successful file writes, every write stops half-way with
    ENOSPC (utils.io.write_file is the one place our files are written)."""
    import errno
    import itertools

    import utils.io
    real, count = utils.io.write_file, itertools.count()

    def write(tmp, data):
        if next(count) < after:
            return real(tmp, data)
        real(tmp, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(utils.io, "write_file", write)
