"""The machine a timing ran on, named in benchmark output and results files (timings mean little without it)."""
import platform
from pathlib import Path


def cpu_model():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
