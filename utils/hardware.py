"""Where a result came from: the code version (in every output), the machine a timing ran on, and timing itself
(timings mean little without the machine)."""
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

# OpenMP/BLAS settings that change CPU timings a lot when the cores are shared (printed with the results)
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def code_version():
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"0.1.0+{commit}" if commit else "0.1.0"


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
