"""Small helpers shared by train.py and predict.py: errors, devices, seeds, sizes, checkpoints."""
import argparse
import os
import pickle
import random
import re
import sys
import tempfile
import warnings

import numpy as np
import torch


class CliError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def run_cli(main, prog):
    """Runs main(); a CliError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except CliError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        sys.exit(2)


def first_line(error):
    """The first line of an exception's message, for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def int_at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text}')
        return value
    parse.__name__ = 'int'  # argparse names the type in its "invalid int value" message
    return parse


def float_in(low, high, low_open=True, high_open=True):
    """A float in an interval; the flag's error names the interval."""
    def parse(text):
        value = float(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f'must be in {interval}, got {text}')
        return value
    parse.__name__ = 'float'
    return parse


def default_gpu_id():
    return 0 if torch.cuda.is_available() else -1


def get_device(gpu_id):
    if gpu_id < 0:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise CliError(f'--gpu_id {gpu_id}: CUDA is not available on this machine; use --gpu_id -1 for the CPU')
    if gpu_id >= torch.cuda.device_count():
        raise CliError(f'--gpu_id {gpu_id}: this machine has {torch.cuda.device_count()} CUDA device(s), '
                       f'numbered from 0')
    return torch.device(f'cuda:{gpu_id}')


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA as well


def hidden_size_schedule(input_size, btl_size, n_layers):
    """n_layers hidden sizes falling in equal steps from input_size toward btl_size.

    The steps divide (input_size - btl_size) into n_layers + 1 parts, so the last hidden
    layer still sits one step above the bottleneck: 784 -> 654 -> 523 -> 393 -> 263 -> 132 -> 2
    for n_layers=5, btl_size=2.
    """
    step = (input_size - btl_size) / (n_layers + 1)
    return [max(round(input_size - step * (i + 1)), 1) for i in range(n_layers)]


def check_writable(path):
    """Fails now, not after training, when a checkpoint could not be written to path."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f'{path} is a folder; --model_fn needs a file name such as model.pth')
    if not os.path.isdir(folder):
        raise CliError(f'cannot write {path}: folder {folder} does not exist')
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-'):
            pass
    except OSError as e:
        raise CliError(f'cannot write {path}: {e.strerror}')


def save_checkpoint(path, checkpoint):
    """Writes to a temporary file beside path, then renames it, so an interrupted save
    leaves the previous file (or none), never a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


CHECKPOINT_KEYS = ('model', 'config', 'history')


def load_checkpoint(path, map_location='cpu'):
    """Loads a checkpoint written by train.py with weights_only=True: tensors and plain
    Python values only, so a file from an untrusted source cannot run code on load."""
    if not os.path.isfile(path):
        raise CliError(f'{path}: no such checkpoint file')
    try:
        with warnings.catch_warnings():  # odd files make torch warn before it fails: one line is enough
            warnings.simplefilter('ignore')
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the weights-only unpickler is safe; any failure means a bad file
        if isinstance(e, pickle.UnpicklingError) and 'Weights only load failed' in str(e):
            blocked = re.search(r'GLOBAL ([\w.]+)', str(e))
            what = f'the Python object {blocked.group(1)}' if blocked else 'Python objects'
            raise CliError(f'{path}: refused: it holds {what}, not only weights and plain values; '
                           f'nothing in it was run')
        raise CliError(f'{path}: not a readable checkpoint (truncated, or not written by torch.save)')
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in CHECKPOINT_KEYS):
        raise CliError(f'{path}: not a checkpoint of this repository (expected a dict with keys '
                       f'{", ".join(CHECKPOINT_KEYS)})')
    return checkpoint
