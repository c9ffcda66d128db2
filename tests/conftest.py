"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test networks are tiny: one torch thread is fastest there and immune to the
    spin-waiting of a second BLAS thread when another process holds the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
