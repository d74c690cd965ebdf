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
