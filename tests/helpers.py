"""What several test modules share: tiny generated data sets, the scripts' command lines, and
small models and configurations. Test modules import from here, never from each other."""
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from checkpoint import load_checkpoint
from config import make_config
from data_loader import write_idx
from utils import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A fast train.py command line: a small network, a few epochs, the CPU.
TINY = ['--hidden_sizes', '64', '32', '--n_epochs', '3', '--batch_size', '64', '--gpu_id', '-1']
# A small AE: no random numbers in its loss, so runs from the same seed take the same steps.
SMALL_AE = make_config(hidden_sizes=[128, 32], btl_size=4, likelihood='mse')


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
    """The four IDX files of a data set of make_images() in folder."""
    os.makedirs(folder, exist_ok=True)
    ext = '.gz' if compress else ''
    for prefix, n, seed in (('train', n_train, 0), ('t10k', n_test, 1)):
        images, labels = make_images(n, seed)
        write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte{ext}'), images)
        write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{ext}'), labels)
    return folder


def run_script(script, *args, env=None, cwd=ROOT):
    """One of the repository's scripts in a fresh Python process."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def printed_losses(stdout, prefix):
    """The name=value pairs of the first line of stdout that starts with prefix."""
    line = next(line for line in stdout.splitlines() if line.startswith(prefix))
    return {k: float(v) for k, v in re.findall(r'(\w+)=([-\d.e+]+)', line)}


def expect_usage_error(main, prog, argv, capsys, match):
    """main(argv) must end with exit status 2 and one line of prog's on stderr that contains match, without a
    traceback; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv), prog)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f'{prog}: ') and 'Traceback' not in err, err
    assert match in err, err
    return err


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def iw_samples_flag(model_fn, n_samples):
    """predict.py's --iw_samples for a VAE's checkpoint (an AutoEncoder's refuses it)."""
    return ['--iw_samples', str(n_samples)] if load_checkpoint(model_fn)['config'].model.is_vae else []


def train_in_process(*argv):
    """train.main with argv, silent; returns the checkpoint it wrote, loaded (argv[1] is --model_fn's value)."""
    import train
    run_cli(lambda: train.main([*argv, '--verbose', '0']), 'train.py')
    return load_checkpoint(argv[1])


def assert_same_run(a, b):
    """Two checkpoints of the same training: equal weights (best and last) and history."""
    assert a['model'].keys() == b['model'].keys()
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert all(torch.equal(a['last']['model'][k], b['last']['model'][k]) for k in a['last']['model'])
    assert without_times(a['history']) == without_times(b['history'])


def without_times(history):
    """A training history without each epoch's wall time, which two runs never share."""
    return [{key: value for key, value in epoch.items() if key != 'seconds'} for epoch in history]


class ScalarModel(nn.Module):
    """loss = (w - 3)^2 whatever the batch: the valid loss is known for any w."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.))

    def set_epoch(self, epoch):
        pass

    def loss(self, x):
        loss = (self.w - 3) ** 2 + 0 * x.sum()
        return loss, {'recon': loss}


def logged_scalars(log_dir):
    """{tag: [(step, value), ...]} of a run's TensorBoard log, read by TensorBoard's own reader (which
    drops the steps that a resumed run told it to purge)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = EventAccumulator(log_dir, size_guidance={'scalars': 0, 'images': 0})
    log.Reload()
    return {tag: [(e.step, e.value) for e in log.Scalars(tag)] for tag in log.Tags()['scalars']}, log


def logged_rows(log_dir):
    import csv
    with open(os.path.join(log_dir, 'metrics.csv'), newline='') as f:
        return list(csv.DictReader(f))


def assert_log_matches(log_dir, history):
    """A run's log holds each epoch of the checkpoint's history once: in TensorBoard (as float32, which
    its events store) and in metrics.csv (exactly)."""
    scalars, _ = logged_scalars(log_dir)
    rows = logged_rows(log_dir)
    assert [int(row['epoch']) for row in rows] == [h['epoch'] for h in history]
    for key in history[0]:
        assert [float(row[key]) for row in rows] == [h[key] for h in history], key
        tag = key.replace('train_', 'train/', 1).replace('valid_', 'valid/', 1)
        assert [value for _, value in scalars[tag]] == [float(np.float32(h[key])) for h in history], key
    steps = [int(row['step']) for row in rows]
    assert [step for step, _ in scalars['valid/loss']] == steps
    return scalars, rows


def flag_values(argv):
    """A command line as {flag: its values}, in order, a flag given twice keeping its last values:
    ['--btl_size', '8', '--tied'] -> {'--btl_size': ['8'], '--tied': []}."""
    groups, flag = {}, None
    for arg in argv:
        if arg.startswith('--'):
            flag = arg
            groups.pop(flag, None)
            groups[flag] = []
        else:
            groups[flag].append(arg)
    return groups


def is_share_of(share, n):
    """Whether share is a share of n things: share * n a whole number, up to the rounding of a float."""
    return abs(share * n - round(share * n)) < 1e-6 * n
