"""Test-only ComfyUI nodes for the server test (copied into the temporary ``custom_nodes/`` as a node pack).

The server test has no text encoder or VAE (a real one is hundreds of megabytes): these two nodes stand in.
- TestConditioning: CONDITIONING of seeded random features shaped as a family's (``comfy_models``).
- LatentAsImage: a LATENT batch shown as an IMAGE (its first three channels squashed into [0, 1]), so that a
  workflow can end in the Diversity score node.
"""

import torch


class TestConditioning:
    CATEGORY = "sparke tests"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "width": ("INT", {"default": 768, "min": 1, "max": 8192}),
                             "pooled": ("INT", {"default": 0, "min": 0, "max": 8192})}}  # fmt: skip

    def make(self, seed, width, pooled):
        gen = torch.Generator().manual_seed(seed)
        extras = {"pooled_output": torch.randn(1, pooled, generator=gen)} if pooled else {}
        return ([[torch.randn(1, 77, width, generator=gen), extras]],)


class LatentAsImage:
    CATEGORY = "sparke tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def show(self, samples):
        z = samples["samples"][:, :3].float()
        return (torch.sigmoid(z).permute(0, 2, 3, 1).contiguous(),)


NODE_CLASS_MAPPINGS = {"TestConditioning": TestConditioning, "LatentAsImage": LatentAsImage}
