"""utils/memory.py: after reuse_freed_memory(), a large freed block stays in the process for the next allocation
instead of going back to the OS (whose pages would then fault in again, zeroed)."""
import subprocess
import sys

import pytest

from conftest import ROOT

PROGRAM = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from utils.memory import reuse_freed_memory
if {reuse}:
    reuse_freed_memory()
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = resident_mb()
np.ones(256 * 2**20 // 8).sum()  # 256 MB, touched, then freed
print(resident_mb() - before)
"""


def kept_mb(reuse):
    run = subprocess.run([sys.executable, "-c", PROGRAM.format(root=str(ROOT), reuse=reuse)], capture_output=True,
                         text=True, check=True)
    return float(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_freed_large_block_stays_for_reuse():
    assert kept_mb(reuse=False) < 32  # glibc unmapped it
    assert kept_mb(reuse=True) > 200
