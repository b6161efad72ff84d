"""What torch sees of the machine: whether it has a CUDA device, and its name (the bench's
machine column)."""
from __future__ import annotations

import torch


def cuda_available() -> bool:
    """Say whether torch sees a CUDA device."""
    return torch.cuda.is_available()


def device_name() -> str:
    """Name the first CUDA device."""
    return torch.cuda.get_device_name(0)
