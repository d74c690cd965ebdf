"""Arithmetic precision. Everything is strict float32 by default, on every device: PyTorch would otherwise run
CUDA convolutions in TF32, which moves this network's layer3 features by 3e-3 relative (measured on an H100),
far outside the official code's float32 results. tf32 (CUDA only) and bf16 autocast (convolutions in bfloat16
on GPUs and on CPUs with AVX512-BF16/AMX; every spatial transform stays float32) are faster opt-ins for the
training step alone: bench/train_speed.py measures the speed-up and how far their gradients move from fp32's,
against the batch-to-batch noise."""
from contextlib import contextmanager

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def strict_fp32():
    """Process-wide: no TF32 in cuDNN convolutions or CUDA matrix products (pick_device calls it)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def at_least_float32(x):
    """float32 for bfloat16/float16 tensors (an autocast region), float64 left as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextmanager
def autocast(device, precision):
    """The block runs in `precision`: TF32 or bf16 autocast, back to strict float32 when it ends."""
    if precision == "tf32":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            strict_fp32()
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
