"""SPARKE as a ComfyUI node pack: SPARKE Diversity (a model patch), SPARKE Bank, Diversity score.

ComfyUI loads it from a clone of this repository in ``custom_nodes/`` (the repository's root ``__init__.py``
imports this module). Nothing here imports ComfyUI until a node runs inside it, and ``import sparke`` never
imports this package. Docs: docs/comfyui.md.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
