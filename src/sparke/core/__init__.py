"""The core of sparke: kernels, diversity scores, the memory bank and the guidance direction.

Pure torch/numpy/safetensors; nothing here imports diffusers. Modules, each importing only those above it:
``defaults`` and ``checks`` (validation), ``kernels``, ``scores``, ``fast`` (the order-2 direction),
``direction``, ``bank``; ``protocol`` says what a bank must offer (``BankLike``).
"""

from .bank import Bank, BankFileError
from .direction import diversity_direction, novelty_direction
from .kernels import kernel_matrix
from .protocol import BankLike
from .scores import cond_rke, cond_vendi, in_batch_similarity, rke, vendi

__all__ = [
    "Bank",
    "BankFileError",
    "BankLike",
    "cond_rke",
    "cond_vendi",
    "diversity_direction",
    "in_batch_similarity",
    "kernel_matrix",
    "novelty_direction",
    "rke",
    "vendi",
]
