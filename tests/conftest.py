"""Fixtures of every test directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def setenv(monkeypatch):
    """`setenv(name, value)` sets an environment variable for this test (value None: unsets it) and re-reads
    `sparseyolo.settings` (which reads the environment once); after the test both are back."""
    from sparseyolo import settings

    def set_(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        settings.reload()

    yield set_
    monkeypatch.undo()
    settings.reload()
