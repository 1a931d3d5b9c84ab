"""The baseline tests run tiny networks: one intra-op thread is faster than two fighting
over a busy 2-core machine, so pin it here (and restore it afterwards)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
