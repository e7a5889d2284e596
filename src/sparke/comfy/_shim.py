"""TEMPORARY: the guide seam until sparke.SPARKE.step_latents / add_to_bank land on main (deleted then)."""

from __future__ import annotations

import torch

from sparke.guidance.spaces import centred, unit_rows


def _features(guide, z):
    return unit_rows(centred(z, float(guide.centre)) if guide.centre else z)


def step_latents(guide, z, x0_of, y):
    with torch.enable_grad():
        zg = z.detach().float().requires_grad_(True)
        x = _features(guide, x0_of(zg))
        d = guide._direction(x.detach(), y)
        (g,) = torch.autograd.grad(x, zg, d)
    flat = z.detach().float().flatten(1)
    g = g.flatten(1)
    gn = g.norm(dim=1, keepdim=True)
    delta = torch.where(gn > 0, guide.scale * flat.norm(dim=1, keepdim=True) * g / gn.clamp_min(1e-30), 0 * g)
    new = flat + delta
    ok = torch.isfinite(new).all(1, keepdim=True)
    return torch.where(ok, new, flat).view_as(z).to(z.dtype)


@torch.no_grad()
def add_to_bank(guide, final, y):
    x = _features(guide, final.float())
    guide.bank.add(x, y)
