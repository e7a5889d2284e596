"""The diffusers plug-in: ``SPARKE`` guidance and the per-step ``attach`` interface for other methods.

Importing this package imports no diffusers module either; it works on any object that looks like a
diffusers pipeline (a ``scheduler`` with ``step``, optional ``vae`` and text encoders).
"""

from .attach import Attachment, Step, attach
from .plugin import SPARKE, CallStats

__all__ = ["SPARKE", "Attachment", "CallStats", "Step", "attach"]
