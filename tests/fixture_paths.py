"""Where the reference fixture lives: trimmed in the repository, and in full beside it when present."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "reference_e2e" / "tiny.npz"  # always present
FULL_REFERENCE = REPO.parent / "shared" / "fixtures" / "reference_e2e" / "tiny.npz"  # optional: every array
