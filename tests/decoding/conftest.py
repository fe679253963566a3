import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models here are far faster on one thread, and much more so on a shared 2-core machine
    (intra-op threads fighting for the cores cost 10-50x). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
