"""Tiny MNIST-like IDX files written by the tests themselves: no data set, no network."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_loader import write_idx  # noqa: E402 (needs the path above)


def make_images(n, seed):
    """n 28 x 28 images of 10 classes: class c is a bright bar at a class-specific row and
    column on a noisy background, so an autoencoder has structure to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 3 + 2 * c:5 + 2 * c, 4:24] = 255
        images[i, 4:24, 3 + 2 * c:5 + 2 * c] = 200
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder, n_train=400, n_test=100, compress=True):
    os.makedirs(folder, exist_ok=True)
    ext = '.gz' if compress else ''
    for prefix, n, seed in (('train', n_train, 0), ('t10k', n_test, 1)):
        images, labels = make_images(n, seed)
        write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte{ext}'), images)
        write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{ext}'), labels)
    return folder


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """A data folder in torchvision's layout (data_dir/MNIST/raw), gzipped."""
    root = tmp_path_factory.mktemp('data')
    write_dataset(os.path.join(root, 'MNIST', 'raw'))
    return str(root)
