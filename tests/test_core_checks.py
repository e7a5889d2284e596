"""The shared validation of the core: errors name the argument, the renamed bandwidth keywords."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import sparke
from sparke.core import checks


def test_checks_name_the_argument():
    with pytest.raises(ValueError, match="^sigma_image:"):
        checks.check_bandwidths(float("inf"), 0.3)
    with pytest.raises(ValueError, match="^sigma_prompt:"):
        checks.check_bandwidths(0.8, 0)
    with pytest.raises(ValueError, match="^bank_x: has 3 feature columns but the batch has 4"):
        checks.as_stored_rows(torch.zeros(2, 3), "bank_x", like=torch.zeros(1, 4), columns=4)
    with pytest.raises(ValueError, match="^device:"):
        checks.check_device("gpu")
    with pytest.raises(ValueError, match="^on_nonfinite:"):
        checks.check_on_nonfinite("ignore")
    assert checks.check_device("cpu") == torch.device("cpu")


def test_stored_rows_keep_their_type_and_memory():
    rows = torch.zeros(5, 4, dtype=torch.float16)
    assert checks.as_stored_rows(rows, "bank_x", like=torch.zeros(1, 4), columns=4) is rows
    ints = checks.as_stored_rows(np.ones((2, 4), dtype=np.int64), "bank_x", like=torch.zeros(1, 4), columns=4)
    assert ints.dtype == torch.float32
    assert checks.as_stored_rows(None, "bank_x", like=torch.zeros(1, 4), columns=4).shape == (0, 4)


def test_old_keywords_stay_in_the_signature():
    """A caller that filters its options by the signature (the plug-in does) still passes the old names."""
    for fn in (
        sparke.Bank().direction,
        sparke.diversity_direction,
        sparke.cond_rke,
        sparke.novelty_direction,
    ):
        params = inspect.signature(fn).parameters
        assert {"sigma_image", "sigma_prompt", "sigma_x", "sigma_y"} <= set(params)
    assert "sigma" in inspect.signature(sparke.rke).parameters  # unconditional scores keep sigma


def test_old_keywords_warn_once_per_call_and_match_the_new():
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    with pytest.warns(DeprecationWarning) as record:
        old = sparke.cond_rke(x, y, sigma_x=0.5, sigma_y=0.4)
    assert len(record) == 1 and "sigma_x= is deprecated, use sigma_image=" in str(record[0].message)
    assert old == sparke.cond_rke(x, y, sigma_image=0.5, sigma_prompt=0.4)


def test_defaults_are_the_papers():
    from sparke.core import defaults

    assert (defaults.SIGMA_IMAGE, defaults.SIGMA_PROMPT) == (0.8, 0.3)
    x, y = torch.nn.functional.normalize(torch.randn(6, 3), dim=1), torch.randn(6, 2)
    assert sparke.cond_rke(x, y) == sparke.cond_rke(x, y, sigma_image=0.8, sigma_prompt=0.3)
    assert sparke.rke(x) == sparke.rke(x, sigma=0.8)
