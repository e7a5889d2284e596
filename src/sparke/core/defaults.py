"""Default settings of the core, in one place, as in the SPARKE paper.

The bandwidths are the paper's values for L2-normalised features (unit rows): with unnormalised features,
scale them with the typical distance between rows.
"""

from __future__ import annotations

# Gaussian bandwidth of the image-feature kernel (paper: sigma_image = 0.8 on unit-norm features).
SIGMA_IMAGE = 0.8
# Gaussian bandwidth of the prompt-feature kernel (paper: sigma_text = 0.3 on unit-norm text features).
SIGMA_PROMPT = 0.3
KERNEL = "gaussian"
OBJECTIVE = "cond-rke"
# What a direction does with a batch row whose result is not finite: "raise" or "skip" (a zero row).
ON_NONFINITE = "raise"
