"""Make the repository importable from tests and locate the shared real data (../shared)."""
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
