"""Shared fixtures: the real datasets beside the clone and small helpers."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real MedMNIST/MedNIST ``.npz`` files (``../shared/data`` beside the clone)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests need ../shared/data beside the clone")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads():
    # Keep tests deterministic and light on the 2-core CI machine.
    torch.set_num_threads(2)
    yield
