"""The checkpoint file, the one place of its format: written whole or not at all, read without
running code, never replaced by accident, the run it holds resumed exactly after a stop (Ctrl-C,
SIGTERM), and what older code wrote upgraded to today's layout on load.

A checkpoint is a plain dict: 'model' (the best epoch's weights), 'opt', the config in three parts
('model_config', 'training_config', 'data_config'; RunConfig.saved), 'history' (one dict per finished
epoch) and 'last' (what resuming needs: the last epoch's weights, the scheduler, the random number
generator states). Loaded, it holds its run's RunConfig as 'config', completed with the defaults of
flags newer than the file.
"""
import contextlib
import os
import pickle
import re
import signal
import sys
import tempfile
import warnings

import torch

from config import DEFAULTS, PARTS, RunConfig, wrong_type
from model import build_model
from utils import CliError, atomic_file, first_line

SAVED_PARTS = tuple(f'{part}_config' for part in PARTS)
CHECKPOINT_KEYS = ('model', *SAVED_PARTS, 'history')
# The keys a checkpoint holds at least: today's, and those of files saved before the config was in parts.
LAYOUTS = (CHECKPOINT_KEYS, ('model', 'config', 'history'))
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Flags that may be given with --resume: they do not change what is being trained.
RESUMABLE_FLAGS = {'n_epochs', 'patience', 'amp', 'compile', 'data_dir'}


def check_writable(path):
    """Fails now, not after training, when a checkpoint could not be written to path."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f'{path} is a folder; --model_fn needs a file name such as model.pth')
    if not os.path.isdir(folder):
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if os.path.isfile(existing):
            raise CliError(f'cannot write {path}: {existing} is a file, not a folder')
        raise CliError(f'cannot write {path}: folder {folder} does not exist')
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-'):
            pass
    except OSError as e:
        raise CliError(f'cannot write {path}: {e.strerror}')


def check_fresh(path, resume, overwrite):
    """A run that neither resumes nor was told to overwrite never replaces an existing file."""
    if os.path.exists(path) and not (resume or overwrite):
        raise CliError(f'{path} exists; give --resume to go on training it or --overwrite to start again '
                       f'(the file is left as it is)')


def save_checkpoint(path, checkpoint):
    """Writes the checkpoint whole or not at all (utils.atomic_file)."""
    with atomic_file(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, map_location='cpu'):
    """Loads a checkpoint written by train.py with weights_only=True: tensors and plain
    Python values only, so a file from an untrusted source cannot run code on load. Its config,
    saved in parts or (older files) as one dict, becomes the complete config of its run, 'config'."""
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
    if not (isinstance(checkpoint, dict) and any(set(keys) <= checkpoint.keys() for keys in LAYOUTS)):
        raise CliError(f'{path}: not a checkpoint of this repository (expected a dict with keys '
                       f'{", ".join(CHECKPOINT_KEYS)})')
    flags = upgraded(saved_flags(checkpoint))
    problem = wrong_type(flags)
    if problem:
        raise CliError(f'{path}: its config is not one that train.py writes ({problem})')
    return {**{k: v for k, v in checkpoint.items() if k not in SAVED_PARTS}, 'config': RunConfig.from_flags(flags)}


def saved_flags(checkpoint):
    """The config that a checkpoint saved, as one dict of flags: from its three parts, or from the
    one dict of every flag ('config') that checkpoints saved before them."""
    if 'config' in checkpoint:
        return checkpoint['config']
    return {name: value for part in SAVED_PARTS for name, value in checkpoint[part].items()}


def upgraded(saved):
    """A config saved by older code in today's flags: the AutoEncoder's loss, 'mse' (or None) or 'bce',
    is its likelihood, 'mse' or 'bernoulli' (its saved likelihood was the VAE's default, unused); its
    --n_layers sizes fell from the input's size, however large (max_hidden_size None); the flags of its
    run (--model_fn, --gpu_id, ...), saved with the others in the oldest layout, are dropped."""
    flags = {'max_hidden_size': None, **{name: value for name, value in saved.items() if name in DEFAULTS}}
    if 'loss' in saved and flags.get('model', 'ae') == 'ae':
        flags['likelihood'] = 'bernoulli' if saved['loss'] == 'bce' else 'mse'
    return flags


def upgrade_state_dict(state_dict):
    """A state dict of an older layout in today's: a GatedLinear saved as two Linears, 'h' and
    'gate', becomes its one Linear of twice the width, and a VampPrior's pseudo-inputs, once
    the VAE's own 'pseudo_inputs', move to its prior part. Today's state dicts are returned as they are."""
    today = {}
    for name, value in state_dict.items():
        prefix, dot, leaf = name.rpartition('.h.')
        partner = f'{prefix}.gate.{leaf}'
        if dot and partner in state_dict:
            today[f'{prefix}.linear.{leaf}'] = torch.cat([value, state_dict[partner]])
        elif name == 'pseudo_inputs':
            today['prior.pseudo_inputs'] = value
        elif not (name.rpartition('.gate.')[1] and name.replace('.gate.', '.h.') in state_dict):
            today[name] = value
    return today


def model_from_checkpoint(checkpoint, path):
    """Rebuilds the model from a checkpoint's config alone and loads its weights. The config
    is first built on the meta device (no memory) and compared with the weights, so a config
    that does not describe them is refused before anything is allocated."""
    try:
        checkpoint['model'] = upgrade_state_dict(checkpoint['model'])
        with torch.device('meta'):
            expected = {k: tuple(v.shape) for k, v in build_model(checkpoint['config']).state_dict().items()}
        found = {k: tuple(getattr(v, 'shape', ())) for k, v in checkpoint['model'].items()}
        if expected != found:
            name = sorted(expected.keys() ^ found.keys() or
                          {k for k in expected if expected[k] != found[k]})[0]
            raise ValueError(f'{name}: the config gives {expected.get(name, "no such tensor")}, '
                             f'the file holds {found.get(name, "no such tensor")}')
        model = build_model(checkpoint['config'])
        model.load_state_dict(checkpoint['model'])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CliError(f'{path}: its weights do not match its config ({first_line(e)})')
    return model


def load_model(path, device):
    """The model saved at path, on device and in eval mode, and its checkpoint (load_checkpoint)."""
    checkpoint = load_checkpoint(path)
    return model_from_checkpoint(checkpoint, path).to(device).eval(), checkpoint


def resumable_flags():
    return ', '.join('--' + f for f in sorted(RESUMABLE_FLAGS))


def resume_config(model_fn, flags, given):
    """The config and checkpoint to go on with: the config saved in model_fn, with the flags given
    (their names) of RESUMABLE_FLAGS taken from the config of the flags. A flag that would change the
    model, the data or the optimisation is refused; a flag newer than the checkpoint takes its default."""
    refused = sorted(given - RESUMABLE_FLAGS)
    if refused:
        raise CliError(f'--resume continues with the flags saved in the checkpoint; --{refused[0]} would change '
                       f'the run (allowed with --resume: --gpu_id, --verbose, the log\'s flags, {resumable_flags()})')
    checkpoint = load_checkpoint(model_fn)
    saved = checkpoint['config']
    if 'last' not in checkpoint:
        raise CliError(f'{model_fn}: holds no state to resume from')
    config = saved.replace(**{name: value for name, value in flags.flags().items() if name in given})
    n_epochs = config.training.n_epochs
    if config.training.scheduler != 'none' and n_epochs != saved.training.n_epochs:
        raise CliError(f'--n_epochs: --scheduler {saved.training.scheduler} was planned over '
                       f'{saved.training.n_epochs} epochs and cannot be stretched on --resume')
    if len(checkpoint['history']) >= n_epochs:
        raise CliError(f'{model_fn} already holds {len(checkpoint["history"])} epochs; give a larger --n_epochs '
                       f'to train on')
    return config, checkpoint


@contextlib.contextmanager
def stop_on_signals(trainer):
    """The first Ctrl-C or SIGTERM asks the Trainer to stop after the current step; a
    second one exits at once, or, during a save, as soon as the save is done: exiting from
    inside torch.save leaves its zip writer half-closed, and that raises an error of its own.
    Yields the context manager that marks a save. The previous handlers come back
    afterwards, unless a stop was requested."""
    saving, exit_code = False, None

    def exit_now(signum, frame):
        nonlocal exit_code
        exit_code = 128 + signum
        when = 'after the save in progress' if saving else 'now'
        print(f'\n{signal.Signals(signum).name} again: exiting {when}; the file on disk stays whole', file=sys.stderr)
        if not saving:
            sys.exit(exit_code)

    def request_stop(signum, frame):
        trainer.stop_requested = signum
        for s in STOP_SIGNALS:
            signal.signal(s, exit_now)

    @contextlib.contextmanager
    def save_in_progress():
        nonlocal saving
        saving = True
        try:
            yield
        finally:
            saving = False
        if exit_code is not None:
            sys.exit(exit_code)

    previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
    try:
        yield save_in_progress
    finally:
        # After a stop the process is on its way out: a second signal must still find exit_now,
        # not the default handler's KeyboardInterrupt and its traceback.
        if not trainer.stop_requested:
            for s, handler in previous.items():
                signal.signal(s, handler)


def saved_so_far(history, path):
    """What the checkpoint file holds now, in words."""
    if not history:
        return f'no epoch finished, {path} was left as it was'
    best = min(history, key=lambda h: h['valid_loss'])
    epochs = 'epoch 1' if len(history) == 1 else f'epochs 1-{len(history)}'
    return f'{path} holds {epochs}, best epoch {best["epoch"]} with valid loss {best["valid_loss"]:.4f}'
