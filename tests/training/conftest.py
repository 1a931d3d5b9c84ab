"""Session fixtures of the training tests."""
import pytest

from tiny_align_zoo import tiny_align_zoo


@pytest.fixture(scope="session")
def align_zoo(tmp_path_factory):
    """A 30-network digits zoo of 64-16-16-10 MLPs (18 train / 6 val / 6 test)."""
    return tiny_align_zoo(tmp_path_factory.mktemp("align-zoo"))
