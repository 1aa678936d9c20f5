"""The log of a training run, for TensorBoard and for any tool that reads CSV: by default the folder
MODEL_log beside the checkpoint MODEL.pth.

    tensorboard --logdir .      # every run under this folder, side by side

In it, TensorBoard's event files and metrics.csv, one row per epoch with the numbers of the
checkpoint's history. Per epoch: every loss part of train and valid, the learning rate, the epoch's
seconds and training images per second, and the best valid loss so far; every N steps the training
loss; every few epochs a fixed set of valid images above their reconstructions, and a VAE's samples
from fixed draws; once, the run's config as hyper-parameters (TensorBoard's HParams table, where
predict.py's test metrics join the best valid loss).

The x-axis is the optimizer step, as in Lightning: an epoch's numbers stand at its last step. An epoch
is written right after the checkpoint that holds it, and a resumed run writes from where its checkpoint
ends (TensorBoard is told to drop any later step of the log), so every epoch appears exactly once.
TensorBoard is imported only when a log is written; without the package the log is metrics.csv alone.
"""
import csv
import math
import os

import torch

from data_loader import to_input
from utils import CliError, EVAL_SEED, atomic_file, first_line, seeded

CSV_NAME = 'metrics.csv'
EVENTS_PREFIX = 'events.out.tfevents.'
N_LOGGED_IMAGES = 8
FLUSH_SECONDS = 10


def default_log_dir(model_fn):
    return os.path.splitext(model_fn)[0] + '_log'


def log_files(folder):
    """The files of a run's log in folder (none when it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name == CSV_NAME or name.startswith(EVENTS_PREFIX))


def prepare_log_dir(folder, resume, overwrite):
    """Makes the log folder of a run before it trains: one that cannot be made or written is refused in
    one line naming --log_dir, and so is the log of another run unless --overwrite, which removes it
    (the log's own files, nothing else). A resumed run goes on with the log it finds."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CliError(f'--log_dir {folder} is a file; give a folder for the log of the run, or --no_log')
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_file(os.path.join(folder, '.write-test')):
            pass
        os.unlink(os.path.join(folder, '.write-test'))
    except OSError as e:
        raise CliError(f'--log_dir {folder}: cannot write the log there ({e.strerror or first_line(e)})')
    existing = log_files(folder)
    if existing and not resume:
        if not overwrite:
            raise CliError(f'--log_dir {folder} holds the log of another run; give --overwrite to replace it, '
                           f'another --log_dir, or --no_log')
        for name in existing:
            os.unlink(os.path.join(folder, name))


def summary_writer(folder, purge_step=None):
    """TensorBoard's SummaryWriter on folder, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # The writer's thread writes the events to disk every FLUSH_SECONDS and at the end of the run.
    return SummaryWriter(folder, purge_step=purge_step, flush_secs=FLUSH_SECONDS)


def hyperparameters(config):
    """A RunConfig as TensorBoard's HParams takes it: numbers, strings and booleans (a list as text)."""
    flat = config.flags()
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in flat.items()}


def epoch_rows(history, steps_per_epoch, n_train):
    """The rows of metrics.csv: each epoch of the history with its last step, its training images per
    second (the epoch's validation included in its seconds) and the best valid loss so far."""
    rows, best = [], math.inf
    for record in history:
        best = min(best, record['valid_loss'])
        rows.append({'epoch': record['epoch'], 'step': record['epoch'] * steps_per_epoch,
                     **{k: v for k, v in record.items() if k != 'epoch'},
                     'images_per_second': n_train / record['seconds'], 'best_valid_loss': best})
    return rows


def scalar_tag(name):
    """TensorBoard's tag of a column: train_recon -> train/recon, the rest under their own name."""
    for prefix in ('train', 'valid', 'test'):
        if name.startswith(prefix + '_'):
            return f'{prefix}/{name[len(prefix) + 1:]}'
    return name


def image_rows(rows, image_shape):
    """Rows of flat images in [0, 1], each (n, C * H * W), as one image (C, rows * H, n * W)."""
    c, h, w = image_shape
    tiles = torch.stack(rows).view(len(rows), -1, c, h, w)
    # |tiles| = (rows, n, C, H, W)
    return tiles.permute(2, 0, 3, 1, 4).reshape(c, len(rows) * h, -1)


class RunLog:
    """The log of one run (written by rank 0 alone): write_epoch(trainer) after each saved epoch,
    step(step, loss) after each training step."""

    def __init__(self, folder, config, history, steps_per_epoch, n_train, valid_images, valid_indices, log_every,
                 images_every):
        self.folder, self.steps_per_epoch, self.n_train = folder, steps_per_epoch, n_train
        self.log_every, self.images_every = log_every, images_every
        self.image_shape = config.model.image_shape
        done = len(history) * steps_per_epoch
        # Steps after the checkpoint's last, left by an interrupted run, are dropped from TensorBoard's view.
        self.writer = summary_writer(folder, purge_step=done + 1 if history else None)
        self.pending = []  # (step, loss) of the epoch in progress, written once the checkpoint holds it
        self.epochs_done = len(history)
        # A seeded choice of valid images, the same in every epoch and every run on the same split.
        chosen = torch.randperm(len(valid_indices), generator=torch.Generator().manual_seed(EVAL_SEED))
        self.images = valid_images[valid_indices[chosen[:N_LOGGED_IMAGES].sort().values]]
        if self.writer is not None and not history:
            from torch.utils.tensorboard.summary import hparams
            _, session_start, _ = hparams(hyperparameters(config), {})
            self.writer.file_writer.add_summary(session_start)
        if history:
            self.write_csv(history)

    @property
    def has_tensorboard(self):
        return self.writer is not None

    def step(self, step, loss):
        """Keeps the loss of every log_every-th step (a tensor: read once, at the epoch's end)."""
        step += self.epochs_done * self.steps_per_epoch
        if self.log_every and step % self.log_every == 0:
            self.pending.append((step, loss))

    def write_epoch(self, trainer):
        """The last epoch of trainer.history, after the checkpoint that holds it was saved."""
        self.epochs_done = len(trainer.history)
        rows = self.write_csv(trainer.history)
        if self.writer is not None:
            row = rows[-1]
            step = row['step']
            if self.pending:
                losses = torch.stack([loss for _, loss in self.pending]).tolist()
                for (at, _), value in zip(self.pending, losses):
                    self.writer.add_scalar('step/train_loss', value, at)
            for name, value in row.items():
                if name != 'step':
                    self.writer.add_scalar(scalar_tag(name), value, step)
            if row['epoch'] == 1 or (self.images_every and row['epoch'] % self.images_every == 0):
                self.write_images(trainer.evaluated, step)
        self.pending = []

    def write_csv(self, history):
        """metrics.csv rewritten whole from the history; returns its rows."""
        rows = epoch_rows(history, self.steps_per_epoch, self.n_train)
        with atomic_file(os.path.join(self.folder, CSV_NAME), 'w', durable=False, newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return rows

    @torch.no_grad()
    def write_images(self, model, step):
        """The fixed valid images above their reconstructions, and a VAE's samples from fixed draws; the
        training's random numbers are left as they were."""
        was_training = model.training
        model.eval()
        with seeded(EVAL_SEED, self.images.device):
            x = to_input(self.images.to(next(model.parameters()).device))
            self.writer.add_image('reconstructions', image_rows([x, model(x)], self.image_shape), step)
            if model.has_prior:
                samples = model.decode(model.sample_prior(2 * N_LOGGED_IMAGES, x.device))
                self.writer.add_image('samples', image_rows(list(samples.chunk(2)), self.image_shape), step)
        model.train(was_training)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def last_step(folder):
    """The step of the last epoch in a run's metrics.csv, or None when folder holds no log."""
    path = os.path.join(folder, CSV_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]['step']) if rows else None


def add_test_metrics(folder, metrics):
    """predict.py's numeric test metrics, as test/NAME scalars at the last step of the run's log, where
    TensorBoard's HParams table shows them beside the best valid loss. Returns whether a log was there
    to take them."""
    step = last_step(folder)
    writer = summary_writer(folder) if step is not None else None
    if writer is None:
        return False
    with writer:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f'test/{name}', value, step)
    return True
