"""The diffusers plug-in: ``SPARKE`` guidance, the guide base class and the per-step ``attach`` interface.

Importing this package imports no diffusers module either; it works on any object that looks like a
diffusers pipeline (a ``scheduler`` with ``step``, optional ``vae`` and text encoders).
"""

from .attach import Attachment, Step, attach
from .guide import Guide, GuideStats
from .plugin import SPARKE, Host
from .schedule import Schedule
from .spec import MethodSpec
from .update import Update

__all__ = [
    "SPARKE",
    "Attachment",
    "Guide",
    "GuideStats",
    "Host",
    "MethodSpec",
    "Schedule",
    "Step",
    "Update",
    "attach",
]
