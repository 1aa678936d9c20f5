"""Fixtures: a tiny MNIST-like data set written by the tests themselves (no download, no
network). Shared helpers are in helpers.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import write_dataset  # noqa: E402 (needs the path above)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """A data folder in torchvision's layout (data_dir/MNIST/raw), gzipped."""
    root = tmp_path_factory.mktemp('data')
    write_dataset(os.path.join(root, 'MNIST', 'raw'))
    return str(root)
