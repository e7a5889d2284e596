"""ComfyUI's entry point for this repository cloned into ``ComfyUI/custom_nodes/``: the sparke node pack.

ComfyUI imports a custom-node folder's ``__init__.py`` and reads its NODE_CLASS_MAPPINGS. The clone's own
``src/`` comes first on the import path, so the nodes are the clone's code; sparke's core needs only torch,
numpy and safetensors, which ComfyUI already has. Docs: docs/comfyui.md.
"""

import os
import sys

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from sparke.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
