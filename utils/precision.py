"""Training precision. fp32 is strict float32 on every device (PyTorch would otherwise run CUDA convolutions
in TF32). tf32 (CUDA only) and bf16 autocast (convolutions in bfloat16 on GPUs and on CPUs with
AVX512-BF16/AMX; every spatial transform stays float32) are faster opt-ins: bench/train_speed.py measures the
speed-up and how far their gradients move from fp32's, against the batch-to-batch noise."""
import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def set_precision(precision):
    """Process-wide switches: TF32 only for 'tf32' (bf16 is autocast, per step)."""
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
