"""utils/memory.py: inside reusing_freed_memory() a large freed block stays in the process for the next allocation
(instead of going back to the OS, whose pages would fault in again); after it, the kept memory is returned."""
import subprocess
import sys

import pytest

from conftest import ROOT

PROGRAM = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from utils.memory import reusing_freed_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def kept_after_free():
    before = resident_mb()
    np.ones(256 * 2**20 // 8).sum()  # 256 MB, touched, then freed
    return resident_mb() - before
start = resident_mb()
outside = kept_after_free()
with reusing_freed_memory():
    inside = kept_after_free()
print(outside, inside, resident_mb() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_kept_inside_the_block_and_returned_after_it():
    run = subprocess.run([sys.executable, "-c", PROGRAM.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True)
    outside, inside, after = map(float, run.stdout.split())
    assert outside < 32  # glibc's default: unmapped at once
    assert inside > 200  # kept for the next allocation
    assert after < 32  # handed back when the block ends
