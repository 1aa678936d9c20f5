"""MNIST-style data: IDX files read into uint8 tensors, a seeded train/valid split, batches.

The whole data set stays on the chosen device as uint8 (47 MB for 60,000 images, a quarter of
float32); each batch is gathered with one index and converted to floats in [0, 1] on the fly.
"""
import gzip
import math
import os
import zlib

import numpy as np
import torch

from utils import CliError

DATASETS = {
    # name: (torchvision class name, its raw folder under data_dir, extra folders to search)
    'mnist': ('MNIST', 'MNIST/raw', []),
    'fashion_mnist': ('FashionMNIST', 'FashionMNIST/raw', ['/usr/share/datasets/fashion-mnist']),
}
CLASS_NAMES = {
    'mnist': [str(digit) for digit in range(10)],
    'fashion_mnist': ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                      'Ankle boot'],
}
IDX_DTYPE_UBYTE = 0x08
READ_CHUNK = 1 << 20


class DataError(CliError):
    """A data set that is missing, corrupt or truncated."""


def read_idx(path):
    """Reads an IDX file of unsigned bytes (plain or .gz) into a uint8 tensor, checking the
    header (magic number, dimensions) against the file's length. The pixels are read in
    chunks straight into the tensor, so reading takes no memory beyond the tensor itself."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            return _read_idx_stream(f, path)
    except (OSError, EOFError, zlib.error) as e:  # what gzip raises for a damaged or cut-off archive
        raise DataError(f'{path}: cannot read ({e})')


def _read_idx_stream(f, path):
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f'{path}: corrupt IDX file, only {len(magic)} bytes')
    if magic[:3] != bytes([0, 0, IDX_DTYPE_UBYTE]) or not 1 <= magic[3] <= 4:
        raise DataError(f'{path}: corrupt IDX file, bad magic number 0x{magic.hex()} '
                        f'(expected 0x0000080N for N unsigned-byte dimensions)')
    dims = f.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise DataError(f'{path}: truncated IDX file, header cut off')
    shape = [int.from_bytes(dims[i:i + 4], 'big') for i in range(0, len(dims), 4)]
    n_bytes = math.prod(shape)
    header_size = 4 + len(dims)
    # Never allocate more than the file holds, so a corrupt header cannot claim gigabytes: the
    # length comes from the file's size, or for gzip from its trailer (the size modulo 2**32).
    expected = header_size + n_bytes
    if path.endswith('.gz'):
        length, expected = _gzip_length(path), expected % 2 ** 32
    else:
        length = os.path.getsize(path)
    if length != expected:
        _raise_wrong_length(path, shape, header_size + n_bytes, length)
    data = torch.empty(n_bytes, dtype=torch.uint8)
    buffer, filled = memoryview(data.numpy()), 0
    while filled < n_bytes:
        got = f.readinto(buffer[filled:filled + READ_CHUNK])
        if not got:
            _raise_wrong_length(path, shape, header_size + n_bytes, header_size + filled)
        filled += got
    if f.read(1):
        raise DataError(f'{path}: corrupt IDX file, bytes after the {tuple(shape)} data its header announces')
    return data.view(*shape)


def idx_bytes(array):
    """A uint8 array in the IDX format: the header for its shape, then its bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, IDX_DTYPE_UBYTE, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape) \
        + array.tobytes()


def write_idx(path, array):
    """Writes a uint8 array as an IDX file (gzip when path ends in .gz) that read_idx reads back."""
    with (gzip.open if path.endswith('.gz') else open)(path, 'wb') as f:
        f.write(idx_bytes(array))
    return path


def _gzip_length(path):
    with open(path, 'rb') as raw:
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), 'little')


def _raise_wrong_length(path, shape, expected, found):
    problem = 'truncated' if found < expected else 'corrupt'
    raise DataError(f'{path}: {problem} IDX file, header says shape {tuple(shape)} = {expected} bytes, '
                    f'file has {found}')


def search_folders(dataset, data_dir):
    _, raw_folder, extra = DATASETS[dataset]
    return [data_dir, os.path.join(data_dir, raw_folder)] + extra


def _find(file_name, folders):
    for folder in folders:
        for candidate in (file_name, file_name + '.gz'):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def _download(dataset, data_dir):
    """Asks torchvision for the files; True when they arrived."""
    import torchvision  # only needed here, and slow to import
    tv_class = getattr(torchvision.datasets, DATASETS[dataset][0])
    try:
        tv_class(data_dir, train=True, download=True)
        tv_class(data_dir, train=False, download=True)
        return True
    except Exception:  # offline, blocked, or a mirror that is gone: the caller explains
        return False


def load_dataset(dataset, data_dir, train, download=True):
    """Returns (images, labels): uint8 (N, 28, 28) and int64 (N,) of the train or test set."""
    prefix = 'train' if train else 't10k'
    names = (f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte')
    folders = search_folders(dataset, data_dir)
    paths = [_find(name, folders) for name in names]
    if None in paths and download and _download(dataset, data_dir):
        paths = [_find(name, folders) for name in names]
    if None in paths:
        missing = names[paths.index(None)]
        hint = ("install it with 'apt-get install dataset-fashion-mnist' or put the four IDX files in "
                if dataset == 'fashion_mnist' else 'put the four IDX files (plain or .gz) in ')
        raise DataError(f'{dataset}: {missing}[.gz] not found in {", ".join(folders)} and could not be '
                        f'downloaded; {hint}{data_dir}')
    images, labels = (read_idx(path) for path in paths)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f'{paths[0]} and {paths[1]}: expected N images of H x W and N labels, '
                        f'got shapes {tuple(images.shape)} and {tuple(labels.shape)}')
    return images, labels.long()


def select_labels(images, labels, target_labels):
    """Keeps only the images of target_labels (all of them when it is None or empty)."""
    if not target_labels:
        return images, labels
    classes = sorted(labels.unique().tolist())
    unknown = [t for t in target_labels if t not in classes]
    if unknown:
        raise CliError(f'--target_labels {" ".join(map(str, unknown))}: not a class of this data set '
                       f'(classes are {classes[0]}-{classes[-1]})')
    keep = torch.isin(labels, torch.tensor(target_labels))
    return images[keep], labels[keep]


def split_train_valid(n, train_ratio, seed):
    """Index tensors of a seeded random split of n images: the same seed gives the same split
    on every machine. Indices rather than copies, so the images are held once."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_train = int(n * train_ratio)
    if n_train < 1 or n_train == n:
        raise CliError(f'--train_ratio {train_ratio}: leaves an empty split of {n} images')
    return order[:n_train], order[n_train:]


def to_input(images):
    """uint8 images (B, H, W) -> float inputs (B, H * W) in [0, 1]."""
    # |x| = (batch_size, 784)
    return images.reshape(len(images), -1).float().div_(255)
