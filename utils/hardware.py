"""The machine a timing ran on, and timing itself, for the benchmarks (timings mean little without the machine)."""
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

# OpenMP/BLAS settings that change CPU timings a lot when the cores are shared (printed with the results)
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine(device):
    """Header lines for benchmark output: versions, device, threads, cores, load."""
    lines = [f"torch {torch.__version__}, numpy {np.__version__}, device {device}, torch threads "
             f"{torch.get_num_threads()}, usable cores {len(os.sched_getaffinity(0))}, CPU {cpu_model()}"]
    if device.type == "cuda":
        lines.append(f"GPU {torch.cuda.get_device_name(device)}")
    threading = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    lines.append(f"threading env {threading or 'unset'}; load average {os.getloadavg()[0]:.1f} (1 min) at start")
    return "\n".join(lines)


def timed(fn, device):
    """(fn(), seconds); CUDA is synchronised on both sides so queued kernels are counted."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start
