"""The core of sparke: kernels, diversity scores, the memory bank and the guidance direction.

Pure torch/numpy/safetensors; nothing here imports diffusers.
"""

from .bank import Bank, BankFileError
from .direction import diversity_direction, novelty_direction
from .kernels import kernel_matrix
from .scores import cond_rke, cond_vendi, in_batch_similarity, rke, vendi

__all__ = [
    "Bank",
    "BankFileError",
    "cond_rke",
    "cond_vendi",
    "diversity_direction",
    "in_batch_similarity",
    "kernel_matrix",
    "novelty_direction",
    "rke",
    "vendi",
]
