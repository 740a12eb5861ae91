"""Inference tests run single-threaded: the tensors are tiny."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every inference test runs single-threaded (see tests/conftest.py)."""
