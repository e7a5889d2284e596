"""sparke: prompt-aware diversity guidance (SPARKE) for diffusers pipelines, and diversity metrics.

Every public name loads on first use (the core imports only torch, numpy and safetensors; the diffusers
plug-in and the other adapters more), so ``import sparke`` and ``sparke --help`` import no torch.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY = {
    **dict.fromkeys(
        ["Bank", "BankFileError", "cond_rke", "cond_vendi", "diversity_direction", "in_batch_similarity"],
        "sparke.core",
    ),
    **dict.fromkeys(["novelty_direction", "rke", "vendi"], "sparke.core"),
    "SPARKE": "sparke.guidance",
    "Update": "sparke.guidance",
    "IndexedBank": "sparke.core.indexed",
    "AutoBank": "sparke.core.auto",
    "make_bank": "sparke.core.auto",
    "BankLike": "sparke.core.protocol",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparke' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AutoBank",
    "Bank",
    "BankLike",
    "BankFileError",
    "IndexedBank",
    "SPARKE",
    "Update",
    "cond_rke",
    "cond_vendi",
    "diversity_direction",
    "in_batch_similarity",
    "make_bank",
    "novelty_direction",
    "rke",
    "vendi",
]
