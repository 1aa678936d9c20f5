"""Data: MNIST-style IDX files or a folder of one's own images, read into uint8 tensors of
(N, channels, height, width), a seeded train/valid split, batches.

The whole data set stays on the chosen device as uint8 (47 MB for 60,000 images of 28 x 28, a
quarter of float32); each batch is gathered with one index and converted to floats in [0, 1] on
the fly. A folder of images is decoded once into a cache (see read_folder).
"""
import gzip
import hashlib
import json
import math
import os
import shutil
import re
import zlib
from typing import NamedTuple

import numpy as np
import torch

from utils import CliError, first_line, progress_bar

DATASETS = {
    # name: (torchvision class name, its raw folder under data_dir, extra folders to search)
    'mnist': ('MNIST', 'MNIST/raw', []),
    'fashion_mnist': ('FashionMNIST', 'FashionMNIST/raw', ['/usr/share/datasets/fashion-mnist']),
    'folder': None,  # a folder of images: --data_dir names it (see load_folder)
}
CLASS_NAMES = {
    'mnist': [str(digit) for digit in range(10)],
    'fashion_mnist': ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                      'Ankle boot'],
}
IDX_DTYPE_UBYTE = 0x08
READ_CHUNK = 1 << 20
# DEFLATE expands its input at most 1032-fold (a 258-byte match coded in 2 bits).
MAX_DEFLATE_RATIO = 1032


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
    # length comes from the file's size, or for gzip from its trailer (the size modulo 2**32) and
    # from the most that its compressed bytes can expand to.
    expected = header_size + n_bytes
    length = os.path.getsize(path)
    if path.endswith('.gz'):
        if expected > MAX_DEFLATE_RATIO * length:
            raise DataError(f'{path}: corrupt IDX file, header says shape {tuple(shape)} = {expected} bytes, more '
                            f'than a gzip file of {length} bytes can hold')
        length, expected = _gzip_length(path), expected % 2 ** 32
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
    """Asks torchvision for the files; True when they arrived. A failed download leaves nothing
    behind: the folders it created (torchvision makes DATA_DIR/MNIST/raw before it fails) are removed."""
    import torchvision  # only needed here, and slow to import
    tv_name, raw_folder, _ = DATASETS[dataset]
    folders = [data_dir, *(os.path.join(data_dir, *raw_folder.split('/')[:i + 1])
                           for i in range(len(raw_folder.split('/'))))]
    new = [folder for folder in folders if not os.path.exists(folder)]
    tv_class = getattr(torchvision.datasets, tv_name)
    try:
        tv_class(data_dir, train=True, download=True)
        tv_class(data_dir, train=False, download=True)
        return True
    except Exception:  # offline, blocked, or a mirror that is gone: the caller explains
        if new:
            shutil.rmtree(new[0], ignore_errors=True)  # the outermost folder it made, with what it put inside
        return False


def load_dataset(dataset, data_dir, train, download=True, image_size=None, channels=None, shared=False):
    """Returns (images, labels) of the train or test set: uint8 (N, C, H, W) and int64 (N,).
    image_size (H, W) resizes the images and channels (1 or 3) converts them; without them a
    folder's images must all have the same size and kind, and MNIST's are 1 x 28 x 28. A folder's
    images, and with shared the IDX files' too (train.py under torchrun), are memory-mapped from a
    cache file, decoded once, whose pages every process of the machine shares."""
    if dataset == 'folder':
        return load_folder(data_dir, train, image_size, channels)
    images_path, labels_path = find_idx_files(dataset, data_dir, train, download)
    labels = read_idx(labels_path)

    def decode():
        images = read_idx(images_path)
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise DataError(f'{images_path} and {labels_path}: expected N images of H x W and N labels, '
                            f'got shapes {tuple(images.shape)} and {tuple(labels.shape)}')
        return convert(images[:, None], image_size, channels)
    if not shared:
        return decode(), labels.long()
    images = memory_mapped(cache_file(images_path, [os.path.abspath(images_path)], image_size, channels), decode)
    return images, labels.long()


def find_idx_files(dataset, data_dir, train, download):
    """The paths of the images' and the labels' IDX files of MNIST or Fashion-MNIST."""
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
    return paths


def class_names(dataset, data_dir):
    """The names of the classes, indexed by label; None for a folder of images without class
    folders (unlabelled)."""
    if dataset != 'folder':
        return CLASS_NAMES[dataset]
    check_folder(data_dir)
    root = os.path.join(data_dir, 'train') if is_train_test_pair(data_dir) else data_dir
    return list_images(root)[2]


# --- a folder of images ---------------------------------------------------------------------------------------------

# What torchvision.io.decode_image reads; other files in the folder are ignored.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp')
# A folder without train/ and test/ subfolders: this share of its images, drawn with this seed
# (whatever --seed is, so that every run is tested on the same images), is its test set.
HELD_OUT_SHARE = .2
HELD_OUT_SEED = 0
CACHE_VERSION = 2


def check_folder(data_dir):
    if not os.path.isdir(data_dir):
        raise DataError(f'--data_dir {data_dir}: no such folder; give the folder of your images')


def is_train_test_pair(data_dir):
    return all(os.path.isdir(os.path.join(data_dir, name)) for name in ('train', 'test'))


def load_folder(data_dir, train, image_size=None, channels=None):
    """(images, labels) of a folder of images: its train/ or test/ subfolder when it has both,
    else the seeded HELD_OUT_SHARE of its images (test) or the rest (train). Class subfolders
    give the labels, in the sorted order of their names; a folder of images alone is
    unlabelled (every label 0)."""
    check_folder(data_dir)
    if is_train_test_pair(data_dir):
        train_dir, test_dir = (os.path.join(data_dir, name) for name in ('train', 'test'))
        names, test_names = list_images(train_dir)[2], list_images(test_dir)[2]
        if (names is None) != (test_names is None):
            raise DataError(f'{data_dir}: one of train/ and test/ has class folders and the other not; give both '
                            f'class folders or neither')
        return read_folder(train_dir if train else test_dir, image_size, channels, names)
    n_images = len(list_images(data_dir)[0])
    train_part, test_part = held_out_split(n_images)
    # The cache holds the training images, then the test images, each in the folder's order: both
    # are views of the one memory-mapped file, never copies.
    n_train = len(train_part)
    images, labels = read_folder(data_dir, image_size, channels, order=torch.cat([train_part, test_part]))
    if len(test_part) < 1 or len(train_part) < 1:
        raise DataError(f'{data_dir}: {n_images} images are too few to hold out a test set; add images or '
                        f'give train/ and test/ subfolders')
    return (images[:n_train], labels[:n_train]) if train else (images[n_train:], labels[n_train:])


def held_out_split(n_images):
    """The positions in a folder's sorted list of images of its training images and of its held-out
    test images (a seeded HELD_OUT_SHARE), each in the folder's order."""
    n_test = int(n_images * HELD_OUT_SHARE)
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    return order[n_test:].sort().values, order[:n_test].sort().values


def test_files(dataset, data_dir):
    """The file of each test image of a folder, in the order load_folder gives them; None for IDX files."""
    if dataset != 'folder':
        return None
    if is_train_test_pair(data_dir):
        return list_images(os.path.join(data_dir, 'test'), list_images(os.path.join(data_dir, 'train'))[2])[0]
    paths = list_images(data_dir)[0]
    return [paths[i] for i in held_out_split(len(paths))[1]]


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def visible(folder):
    """The entries of a folder that do not start with a dot, sorted by name."""
    return sorted((e for e in os.scandir(folder) if not e.name.startswith('.')), key=lambda e: e.name)


def images_under(folder):
    """Every image file in folder and its subfolders, in sorted order."""
    found = []
    for entry in visible(folder):
        if entry.is_dir():
            found += images_under(entry.path)
        elif entry.is_file() and is_image(entry.name):
            found.append(entry.path)
    return found


def list_images(root, known_classes=None):
    """(paths, labels, class names) of a folder: one subfolder per class (labels from the
    sorted names, or from known_classes, the training set's, for a test folder), or images
    alone (labels 0, class names None)."""
    try:
        entries = visible(root)
    except OSError as e:
        raise DataError(f'{root}: cannot read the folder ({e.strerror})')
    folders = [e for e in entries if e.is_dir()]
    files = [e.path for e in entries if e.is_file() and is_image(e.name)]
    kinds = ' '.join(IMAGE_EXTENSIONS)
    if not folders:
        if not files:
            what = 'an empty folder' if not entries else f'a folder with no images ({kinds})'
            raise DataError(f'{root}: {what}; give a folder of images or of class folders of images')
        return files, [0] * len(files), None
    if files:
        raise DataError(f'{files[0]}: an image beside the class folders of {root}; move it into its class folder')
    names = [e.name for e in folders]
    classes = names if known_classes is None else known_classes
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise DataError(f'{os.path.join(root, unknown[0])}: a class that the training folder does not have')
    paths, labels = [], []
    for folder in folders:
        found = images_under(folder.path)
        if not found:
            raise DataError(f'{folder.path}: a class folder with no images ({kinds}); add images or remove it')
        paths += found
        labels += [classes.index(folder.name)] * len(found)
    return paths, labels, classes


def read_folder(root, image_size=None, channels=None, known_classes=None, order=None):
    """(images, labels) of every image in root (in the given order of their sorted list, when given),
    decoded with torchvision. The decoded images are cached (cache_file) and memory-mapped from the
    cache: a later read of the same files, unchanged, loads the cache, and the processes that read it
    at once share its pages."""
    paths, labels = list_images(root, known_classes)[:2]
    if order is not None:
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    cache_path = cache_file(root, paths, image_size, channels, ordered=order is not None)
    images = memory_mapped(cache_path, lambda: decode_images(paths, image_size, channels), len(paths))
    return images, torch.tensor(labels, dtype=torch.long)


def memory_mapped(cache_path, decode, n_images=None):
    """The images cached at cache_path, memory-mapped; decoded and cached first when there is no usable
    cache (and then mapped too, so that the process that wrote the cache holds no copy of its own)."""
    images = load_cache(cache_path, n_images)
    if images is None:
        images = decode()
        mapped = load_cache(cache_path, len(images)) if save_cache(cache_path, images) else None
        images = images if mapped is None else mapped
    return images


def cache_folder():
    return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'autoencoders')


def cache_file(root, paths, image_size, channels, ordered=False):
    """The cache's name: a hash of the folder (or file) and of how its images are converted, then a
    hash of its file list (names, sizes, modification times), so that a changed folder gets a new
    name and replaces the cache of its old state."""
    stats = [(os.path.relpath(path, root), os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths]
    folder = json.dumps([CACHE_VERSION, os.path.abspath(root), image_size and list(image_size), channels, ordered])
    return os.path.join(cache_folder(), f'{digest(folder, 12)}-{digest(json.dumps(stats), 24)}.pt')


def digest(text, n_chars):
    return hashlib.sha256(text.encode()).hexdigest()[:n_chars]


def load_cache(path, n_images=None):
    """The cached images, memory-mapped, or None when there is no usable cache."""
    try:
        images = torch.load(path, weights_only=True, mmap=True)
    except Exception:  # no cache yet, or one cut off or damaged: decode again
        return None
    usable = isinstance(images, torch.Tensor) and images.dim() == 4 and n_images in (None, len(images))
    return images if usable else None


def save_cache(path, images):
    """Writes the cache atomically and removes older caches of the same folder; returns whether it
    was written. A cache that cannot be written only costs time, so it is reported and skipped."""
    folder = os.path.dirname(path)
    tmp_path = path + f'.{os.getpid()}.tmp'
    try:
        os.makedirs(folder, exist_ok=True)
        torch.save(images, tmp_path)
        os.replace(tmp_path, path)
        folder_id = os.path.basename(path).split('-')[0]
        for name in os.listdir(folder):
            if name.startswith(folder_id + '-') and name != os.path.basename(path):
                os.unlink(os.path.join(folder, name))
    except OSError as e:
        print(f'note: cannot write the image cache in {folder} ({e.strerror}); the folder will be decoded again '
              f'next time')
        return False
    return True


# A folder's bad files are named in one error, up to this many, then counted.
MAX_NAMED_FILES = 5


def decode_images(paths, image_size=None, channels=None):
    """Decodes image files into one uint8 tensor (N, C, H, W). Without image_size they must
    share one size, and without channels one kind (gray or colour); alpha is dropped."""
    import torchvision.io  # slow to import, and only needed here
    images = first = None
    undecodable = []
    for i, path in enumerate(progress_bar(paths, desc=f'decoding {len(paths)} images', unit='image', leave=False)):
        try:
            image = torchvision.io.decode_image(torchvision.io.read_file(path), torchvision.io.ImageReadMode.UNCHANGED)
        except RuntimeError as e:
            undecodable.append(f'{path}: cannot decode it as an image ({decoder_message(e)})')
            continue  # the others are still read, so that one error names every bad file
        # |image| = (C, H, W): C is 1 gray, 2 gray + alpha, 3 colour, 4 colour + alpha
        image = image[:1] if len(image) <= 2 else image[:3]
        if first is None:
            first, first_image = path, image
        elif channels is None and len(image) != len(first_image):
            gray, colour = (first, path) if len(first_image) == 1 else (path, first)
            raise DataError(f'{gray} is gray and {colour} is colour; give --channels 1 or --channels 3 to convert '
                            f'them all')
        elif image_size is None and image.shape[1:] != first_image.shape[1:]:
            raise DataError(f'{first} is {size_text(first_image)} and {path} is {size_text(image)}; give '
                            f'--image_size H W to resize them all')
        image = convert(image, image_size, channels)
        if images is None:
            images = torch.empty((len(paths), *image.shape), dtype=torch.uint8)
        images[i] = image
    if undecodable:
        named = '; '.join(undecodable[:MAX_NAMED_FILES])
        more = f'; and {len(undecodable) - MAX_NAMED_FILES} more' if len(undecodable) > MAX_NAMED_FILES else ''
        raise DataError(f'{named}{more}; replace or remove {"it" if len(undecodable) == 1 else "them"}')
    return images


def write_image_folder(root, images, labels=None, names=None, ext='.png', start_index=0):
    """Writes uint8 images (N, C, H, W) as image files that load_folder reads back in the same
    order: files numbered from start_index, in one folder per class when labels are given (named by
    names, with any '/' written as '-'). PNG is lossless; JPEG ('.jpg') is written at quality 95."""
    import torchvision.io  # slow to import, and only needed here
    for i, image in enumerate(images):
        folder = root
        if labels is not None:
            label = int(labels[i])
            folder = os.path.join(root, (names[label] if names else str(label)).replace('/', '-'))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'{start_index + i:06d}{ext}')
        if ext == '.png':
            torchvision.io.write_png(image, path)
        else:
            torchvision.io.write_jpeg(image, path, quality=95)
    return root


def decoder_message(error):
    """torchvision's decoding error without the C++ source location, to its first sentence."""
    return re.sub(r'^[\w()]+, \S+:\d+, ', '', first_line(error)).split('. ')[0]


def size_text(image):
    return f'{image.shape[-2]} x {image.shape[-1]}'


def convert(images, image_size=None, channels=None):
    """uint8 images (..., C, H, W) resized to image_size (H, W) and converted to channels (1:
    gray, 3: colour) where given and different."""
    if channels == 1 and images.shape[-3] == 3:
        images = torchvision_functional().rgb_to_grayscale(images)
    elif channels == 3 and images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if image_size and tuple(images.shape[-2:]) != tuple(image_size):
        images = torchvision_functional().resize(images, list(image_size), antialias=True)
    return images.contiguous()


def torchvision_functional():
    """torchvision's image functions, imported when first needed: the import takes seconds (it loads
    torch._dynamo), which a run on IDX files at their own size never spends."""
    from torchvision.transforms.v2 import functional
    return functional


def class_indices(classes, names, flag='--target_labels'):
    """Class names or indices (as given on the command line, or ints) -> sorted indices. A
    name is looked up first, so that a folder named 3 is class '3' whatever its index."""
    if names is None:
        raise CliError(f'{flag}: this data set has no classes (a folder of images without class folders)')
    indices = []
    for given in classes:
        if str(given) in names:
            indices.append(names.index(str(given)))
        elif str(given).isdigit() and int(given) < len(names):
            indices.append(int(given))
        else:
            shown = ', '.join(names) if len(names) <= 12 else f'{", ".join(names[:12])}, ...'
            raise CliError(f'{flag} {given}: not a class of this data set (classes 0-{len(names) - 1}: {shown})')
    return sorted(set(indices))


def selected_indices(labels, target_labels):
    """The indices of the images of target_labels, class indices (all of them when it is None or empty)."""
    if not target_labels:
        return torch.arange(len(labels))
    return torch.isin(labels, torch.tensor(target_labels)).nonzero().flatten()


def select_labels(images, labels, target_labels):
    """Keeps only the images of target_labels, class indices (all of them when it is None or
    empty)."""
    if not target_labels:
        return images, labels
    keep = selected_indices(labels, target_labels)
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


class RunImages(NamedTuple):
    """A run's training set and its split: indices into the images, never copies."""
    images: torch.Tensor   # every training image, uint8 (N, C, H, W), as read
    labels: torch.Tensor   # (N,)
    train: torch.Tensor    # the indices trained on
    valid: torch.Tensor    # the indices validated on


def run_images(config, train=True, dataset=None, data_dir=None, shape=None, shared=False):
    """The images of a run as it was trained and is evaluated, for every script: with train, its
    training set (RunImages: the classes of --target_labels, split by --train_ratio and --seed as
    train.py split it); otherwise (images, labels) of its whole test set, binarized once for a
    --binarize run (eval_images). dataset and data_dir replace the config's (another data set, to
    evaluate on), shape (channels, H, W) its --image_size and --channels (the model's image shape)."""
    data = config.data
    size = dict(image_size=data.image_size, channels=data.channels) if shape is None else \
        dict(image_size=list(shape[1:]), channels=shape[0])
    images, labels = load_dataset(dataset or data.dataset, data_dir or data.data_dir, train, shared=shared, **size)
    if not train:
        return eval_images(config, images), labels
    selected = selected_indices(labels, data.target_labels)
    train_indices, valid_indices = (selected[split] for split in
                                    split_train_valid(len(selected), config.training.train_ratio, config.training.seed))
    return RunImages(images, labels, train_indices, valid_indices)


def eval_images(config, images, indices=None):
    """images[indices] (all of them when None) as a run is scored on them: a --binarize run's binarized
    once with the fixed seed, each image drawn as when the whole set is (binarize_once)."""
    if config.data.binarize:
        return binarize_once(images, indices=indices)
    return images if indices is None else images[indices]


# --binarize: valid and test images are binarized once with this seed, so that every run and
# every model is scored on the same binary images.
BINARIZE_SEED = 0


def binarize_once(images, seed=BINARIZE_SEED, chunk=4096, indices=None):
    """uint8 images with each pixel drawn once from a Bernoulli of its intensity: 255 with
    probability pixel / 255, else 0; of images[indices] alone when indices are given, each with the
    draws it gets when all the images are binarized, so that the valid images are the same binary
    images either way. The same images and seed give the same draws; the images are drawn a chunk
    at a time, so memory stays a few MB above the binary images themselves."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.arange(len(images)) if indices is None else indices.cpu()
    binary = torch.empty((len(indices), *images.shape[1:]), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        draws = torch.rand((min(chunk, len(images) - start), *images.shape[1:]), generator=generator)
        here = ((indices >= start) & (indices < start + chunk)).nonzero().flatten()
        rows = indices[here]
        binary[here] = (draws[rows - start] * 255 < images[rows.to(images.device)].cpu()).to(torch.uint8) * 255
    return binary.to(images.device)


def binary_input(images):
    """uint8 images (B, C, H, W) -> inputs (B, C * H * W) of binary pixels, each 1 with probability
    pixel / 255: a uniform integer in [0, 255) falls below the pixel with exactly that chance, and
    drawing bytes is several times faster than torch.bernoulli of the float intensities."""
    draws = torch.randint(0, 255, images.shape, dtype=torch.uint8, device=images.device)
    return (draws < images).reshape(len(images), -1).float()


def to_input(images):
    """uint8 images (B, C, H, W) -> float inputs (B, C * H * W) in [0, 1]."""
    # |x| = (batch_size, C * H * W), e.g. (batch_size, 784) for MNIST
    return images.reshape(len(images), -1).float().div_(255)
