"""Shared test fixtures. Module-specific fixtures live in their own test files."""

import os

import pytest


@pytest.fixture
def store_dir(tmp_path):
    """A path for a new store directory (not yet created)."""
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def _private_umask():
    """Tests run under the default umask; permission tests set their own."""
    old = os.umask(0o022)
    yield
    os.umask(old)
