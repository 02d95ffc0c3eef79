"""Data the task tests share: digits a session's model never saw, and a tiny set to train through a backbone."""

import pytest

from tests.support import make_digits


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """Digits 5-9, new to the session's model: 20 of each to train on and 20 others to validate on."""
    root = tmp_path_factory.mktemp("target")
    return make_digits(root / "train", range(5, 10), per_class=20), make_digits(
        root / "val", range(5, 10), per_class=20, offset=20
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 digits (0-4) for runs that train through the backbone (2 steps of 16 an epoch, 8 to validate on)."""
    return make_digits(tmp_path_factory.mktemp("tiny"), range(5), per_class=8)
