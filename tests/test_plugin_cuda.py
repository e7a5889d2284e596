"""SPARKE on CUDA: fp16 pipelines and model CPU offload (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from sparke.guidance import SPARKE
from tiny_pipelines import build, call_kwargs, final_latents

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, x):
        return self.head(torch.nn.functional.silu(self.conv(x.to(self.conv.weight.dtype))).mean((2, 3)))


CASES = [(n, False, "latent") for n in ("sd", "sdxl", "sd3", "flux", "pixart", "dit", "controlnet")]
CASES += [(n, True, "latent") for n in ("sd", "sdxl", "sd3", "flux")]
CASES += [(n, True, s) for n in ("sd", "flux") for s in ("x0", "encoder")]


@pytest.mark.parametrize("name, offload, space", CASES)
def test_fp16_cuda(name, offload, space):
    pipe = build(name).to(torch.float16)
    if offload:
        pipe.enable_model_cpu_offload(device="cuda")
    else:
        pipe.to("cuda")

    def kw():
        return call_kwargs(pipe, num_images_per_prompt=2, steps=3)

    vanilla = final_latents(pipe(**kw()))
    assert torch.equal(final_latents(SPARKE(scale=0.0)(pipe, **kw())), vanilla)
    guide = SPARKE(scale=0.3, every=1, space=Encoder().cuda() if space == "encoder" else space)
    out = final_latents(guide(pipe, **kw()))
    assert torch.isfinite(out.float()).all() and not torch.equal(out, vanilla)
    assert guide.stats.guided == 3 and len(guide.bank) == 4
    assert "step" not in vars(pipe.scheduler)
