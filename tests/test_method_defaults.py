"""Every method's default makes images: on the default (embedded) model, each method of ``sparke methods`` at
its default scale and settings keeps the shape+colour match rate within 10 points of ``none``.

Issue 21: ``--method pg`` at its old default (0.05) turned every image into RGB static (shape+colour 0.000);
the test holds every registered method, so a new method's default is held too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparke.embedded.encoder import WEIGHTS as ENCODER_WEIGHTS

STEPS = 8  # CLEAN_STEPS of the embedded model: the fewest that give clean images, to keep the test cheap
SLACK = 0.10  # 10 points of shape+colour, the bound
# 32 images per method, in batches of one cluster's 4 prompts (the CLI's batch size). With 16 an image was 6.25
# points and three methods sat one image from the bound, so a float flip of one borderline image between machines
# failed the test; at 32 (none 27 of 32 on 2026-12-03) the closest method (vendi, 25) is two images from it.
CLUSTERS, PROMPTS = 8, 4

pytestmark = pytest.mark.skipif(
    not ENCODER_WEIGHTS.exists(), reason="the embedded model's weights are not shipped"
)


@pytest.fixture(scope="module")
def shape_colour_rate():
    from sparke.embedded import check, load_pipeline, matches, prompt_clusters
    from sparke.methods import make

    pipe = load_pipeline()
    clusters = prompt_clusters(CLUSTERS, PROMPTS, seed=0)

    def rate(method: str, scale: float | None = None, n_clusters: int = CLUSTERS) -> float:
        guide = make(method, scale=scale)
        hits = []
        for c, cluster in enumerate(clusters[:n_clusters]):
            generators = [torch.Generator().manual_seed(100 * c + i) for i in range(len(cluster.prompts))]
            images = guide(
                pipe,
                prompt=list(cluster.prompts),
                num_inference_steps=STEPS,
                generator=generators,
                output_type="np",
            ).images
            core = {k: cluster.required[k] for k in ("shape", "colour", "count") if k in cluster.required}
            hits += [bool(matches(check((im * 255).round().astype(np.uint8)), core)) for im in images]
        return float(np.mean(hits))

    return rate


@pytest.mark.slow  # 8 methods x 32 images x 8 steps: 3 min on one thread beside two benchmark processes
def test_every_method_default_keeps_shape_and_colour_near_none(shape_colour_rate):
    from sparke.methods import METHODS

    baseline = shape_colour_rate("none")
    assert baseline >= 0.6, baseline  # the model itself makes on-prompt images at this step count
    rates = {name: shape_colour_rate(name) for name in METHODS if name != "none"}
    print({"none": baseline, **rates})
    low = {name: rate for name, rate in rates.items() if rate < baseline - SLACK}
    assert not low, f"none: {baseline:.3f}; below it by more than {SLACK}: {low}"


def test_particle_guidance_at_the_old_default_made_static(shape_colour_rate):
    # the finding this guards against, so that the test above can fail: pg at 0.05 leaves no image on-prompt
    assert shape_colour_rate("pg", 0.05, n_clusters=2) == 0.0


def test_the_embedded_model_refuses_a_step_count_it_cannot_sample_from():
    from sparke.embedded import load_pipeline
    from sparke.embedded.pipeline import MIN_STEPS

    with pytest.raises(
        ValueError, match=f"num_inference_steps=1: the shapes model needs at least {MIN_STEPS}"
    ):
        load_pipeline()(prompt="a red circle", num_inference_steps=1)
