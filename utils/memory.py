"""Keep freed memory for reuse instead of handing it back to the OS after every large free.

glibc serves each allocation of over 32 MB with a fresh mmap and unmaps it when freed, so the next one
page-faults every page back in: ~0.3 ms per MB on the 2-core VM this project is measured on. An evaluation
round allocates and frees GBs of that size (feature chunks, the Gaussian, maps, sort keys), and those faults were a
quarter of a 10-round evaluation (18.2 s -> 14 s without them, results/eval_speed_cpu.md). Kept in the heap,
freed blocks are reused at once; the process keeps its peak size until it ends, which for these short-lived
commands costs nothing.
"""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory():
    """Allocations up to 2 GiB from the heap, and no trimming of its top: a no-op where libc is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 2**31 - 1)  # the most an int holds: 2 GiB
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
