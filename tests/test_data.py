import gzip
import os

import numpy as np
import pytest
import torch

import data_loader
from helpers import make_images, write_dataset
from data_loader import (DataError, idx_bytes, load_dataset, read_idx, select_labels, split_train_valid, to_input,
                         write_idx)
from utils import CliError


@pytest.mark.parametrize('name', ['images-idx3-ubyte', 'images-idx3-ubyte.gz'])
def test_read_idx_plain_and_gzip(tmp_path, name):
    images, _ = make_images(7, seed=0)
    path = write_idx(str(tmp_path / name), images)
    result = read_idx(path)
    assert result.dtype == torch.uint8 and result.shape == (7, 28, 28)
    assert np.array_equal(result.numpy(), images)


def test_read_idx_labels(tmp_path):
    path = write_idx(str(tmp_path / 'labels-idx1-ubyte'), [3, 1, 4, 1, 5])
    assert read_idx(path).tolist() == [3, 1, 4, 1, 5]


@pytest.mark.parametrize('mutate, message', [
    (lambda b: b'\x00\x00\x09\x03' + b[4:], 'bad magic number'),     # int8 instead of ubyte
    (lambda b: b'\x12\x34' + b[2:], 'bad magic number'),
    (lambda b: b[:-5], 'truncated IDX file'),                       # cut inside the pixels
    (lambda b: b[:9], 'truncated IDX file, header'),                # cut inside the header
    (lambda b: b + b'\x00' * 3, 'corrupt IDX file'),                # bytes after the data
    (lambda b: b[:2], 'corrupt IDX file, only 2 bytes'),
])
def test_read_idx_names_the_corrupt_or_truncated_file(tmp_path, mutate, message):
    images, _ = make_images(3, seed=0)
    path = tmp_path / 'bad-images-idx3-ubyte'
    path.write_bytes(mutate(idx_bytes(images)))
    with pytest.raises(DataError, match=message) as error:
        read_idx(str(path))
    assert str(path) in str(error.value)


def test_read_idx_truncated_gzip(tmp_path):
    images, _ = make_images(3, seed=0)
    whole = gzip.compress(idx_bytes(images))
    path = tmp_path / 'images-idx3-ubyte.gz'
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match='truncated|corrupt|cannot read') as error:
        read_idx(str(path))
    assert str(path) in str(error.value)


def test_read_idx_gzip_header_that_claims_more_than_the_archive_can_hold(tmp_path):
    # 256 x 65536 x 65537 bytes is 2**40 + 2**24: a gzip trailer (the length modulo 2**32) cannot
    # tell it from the 2**24 bytes that are there, but 16 KB of compressed bytes cannot hold 1 TB.
    shape = (256, 65536, 65537)
    header = bytes([0, 0, 8, 3]) + b''.join(d.to_bytes(4, 'big') for d in shape)
    path = tmp_path / 'images-idx3-ubyte.gz'
    path.write_bytes(gzip.compress(header + bytes(2 ** 24)))
    with pytest.raises(DataError, match='more than a gzip file of') as error:
        read_idx(str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize('layout', ['', 'MNIST/raw'])
@pytest.mark.parametrize('compress', [True, False])
def test_load_dataset_finds_files_in_data_dir_and_torchvision_layout(tmp_path, layout, compress):
    write_dataset(os.path.join(tmp_path, layout), n_train=50, n_test=20, compress=compress)
    images, labels = load_dataset('mnist', str(tmp_path), train=True, download=False)
    assert images.shape == (50, 1, 28, 28) and labels.shape == (50,) and labels.dtype == torch.int64
    images, labels = load_dataset('mnist', str(tmp_path), train=False, download=False)
    assert images.shape == (20, 1, 28, 28)


def test_missing_data_set_names_the_folders_searched(tmp_path, monkeypatch):
    # The Debian package's folder may exist on this machine: search an empty stand-in instead.
    system_folder = str(tmp_path / 'usr-share-datasets')
    monkeypatch.setitem(data_loader.DATASETS, 'fashion_mnist', ('FashionMNIST', 'FashionMNIST/raw', [system_folder]))
    with pytest.raises(DataError) as error:
        load_dataset('fashion_mnist', str(tmp_path), train=True, download=False)
    message = str(error.value)
    for folder in (str(tmp_path), os.path.join(tmp_path, 'FashionMNIST/raw'), system_folder):
        assert folder in message
    assert 'apt-get install dataset-fashion-mnist' in message


def test_images_and_labels_of_different_lengths(tmp_path):
    write_dataset(str(tmp_path), n_train=30, n_test=10, compress=False)
    write_idx(str(tmp_path / 'train-labels-idx1-ubyte'), np.zeros(29))
    with pytest.raises(DataError, match='expected N images'):
        load_dataset('mnist', str(tmp_path), train=True, download=False)


def test_split_sizes_disjoint_and_seeded():
    train_idx, valid_idx = split_train_valid(100, .8, seed=3)
    assert len(train_idx) == 80 and len(valid_idx) == 20
    assert sorted(train_idx.tolist() + valid_idx.tolist()) == list(range(100))  # disjoint, complete
    again, _ = split_train_valid(100, .8, seed=3)
    other, _ = split_train_valid(100, .8, seed=4)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)


def test_split_refuses_an_empty_side():
    with pytest.raises(CliError, match='empty split'):
        split_train_valid(3, .1, seed=0)


def test_select_labels():
    labels = torch.tensor([0, 1, 2, 3, 8, 9, 1])
    images = torch.arange(7)
    kept_images, kept_labels = select_labels(images, labels, [1, 8])
    assert kept_labels.tolist() == [1, 8, 1] and kept_images.tolist() == [1, 4, 6]


def test_to_input_scales_to_unit_interval():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    assert torch.allclose(to_input(images), torch.tensor([[0., 1., .2, .4]]))


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    class Offline:  # what torchvision does offline: it makes DATA_DIR/MNIST/raw, then fails to fetch
        def __init__(self, root, train, download):
            os.makedirs(os.path.join(root, 'MNIST', 'raw'), exist_ok=True)
            open(os.path.join(root, 'MNIST', 'raw', 'train-images-idx3-ubyte.gz.part'), 'w').close()
            raise OSError('no network')

    import torchvision
    monkeypatch.setattr(torchvision.datasets, 'MNIST', Offline)
    kept = tmp_path / 'kept'
    kept.mkdir()
    (kept / 'notes.txt').write_text('mine')
    for data_dir in (tmp_path / 'data', kept):
        with pytest.raises(DataError, match='could not be downloaded'):
            load_dataset('mnist', str(data_dir), train=True)
    assert sorted(os.listdir(tmp_path)) == ['kept'] and os.listdir(kept) == ['notes.txt']
