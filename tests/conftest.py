"""Shared fixtures."""

from __future__ import annotations

import pytest

from cli_helpers import one_thread


@pytest.fixture(scope="module")
def torch_one_thread():
    """A module's tests on one torch thread (see ``cli_helpers.one_thread``)."""
    with one_thread():
        yield
