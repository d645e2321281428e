"""Helpers shared by the YOLO tests (imported by name, as `tests/sparse/engine_utils.py`)."""

from __future__ import annotations

import pytest


def require_aerial_data() -> None:
    """Skip, naming the missing files, when deepforest's scene files are neither cached nor downloadable. Only the
    fetch is guarded: any error after it (a broken forward is a RuntimeError too) fails the test."""
    from sparseyolo.data import aerial

    wanted = [f"{s}.{e}" for s in aerial.SCENES for e in ("png", "xml")]
    try:
        have = {p.name for p in aerial.aerial_files() if p.is_file()}
    except (RuntimeError, FileNotFoundError) as e:  # the download failed and nothing is cached
        pytest.skip(f"deepforest data files unavailable: {wanted} ({e})")
    missing = [f for f in wanted if f not in have]
    if missing:
        pytest.skip(f"deepforest data files missing: {missing}")
