"""``quiet_transformers()``: load a transformers model without its notices and progress bars.

transformers 5 prints a "Loading weights" bar for every ``from_pretrained`` and, without torchvision (which
sparke does not use), a notice that an image processor falls back to its PIL version; neither is the user's
concern when sparke loads a model for them. The previous verbosity and bar setting are restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logs at error level and its progress bars off, inside the block only."""
    try:
        from transformers.utils import logging
    except ImportError:  # nothing to quiet
        yield
        return
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
