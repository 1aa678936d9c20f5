"""A run, from its RunConfig to its checkpoint: the data, the model, the Trainer, a checkpoint saved
after every epoch and the run's log. train.py runs one from its flags; oneclass.py and recipes.py
run theirs through train_or_reuse, which reuses a finished checkpoint and resumes an interrupted one.

    config, options, given = flags.parse(['--model_fn', 'ae.pth', '--btl_size', '2'])
    train(config, options, given)
"""
import math
import os
import signal

import torch

from checkpoint import (check_fresh, check_writable, load_checkpoint, model_from_checkpoint, resume_config,
                        save_checkpoint, saved_so_far, stop_on_signals)
from config import fit_length, steps_per_epoch
import distributed
from data_loader import class_indices, class_names, eval_images, run_images
from model import build_model
from runlog import RunLog, default_log_dir, prepare_log_dir
from trainer import NonFiniteLoss, Trainer, build_optimizer, out_of_patience
from utils import CliError, RunStopped, first_line, set_seed

# The flags that may differ between a checkpoint and the config that reuses it: where the data are,
# and how fast the run went.
REUSE_IGNORES = {'data_dir', 'amp', 'compile'}


def train(config, options, given=frozenset(), ranks=distributed.Ranks(), device=torch.device('cpu')):
    """Trains the run of config (a RunConfig) into options.model_fn, or with options.resume goes on with
    the run saved there (given: the names of the flags that the command line gave)."""
    checkpoint = None
    if options.resume:
        config, checkpoint = resume_config(options.model_fn, config, given)
    model_fn, verbose = options.model_fn, options.verbose if ranks.is_main else 0
    log_folder = log_dir(options) if ranks.is_main else None  # the one rank that writes files
    check_fresh(model_fn, options.resume, options.overwrite)
    if ranks.is_main:
        check_writable(model_fn)
    set_seed(config.training.seed)

    config, data = training_data(config, given, checkpoint, model_fn, ranks)
    if config.data.binarize:  # the valid images alone, binarized once (not a copy of the whole set)
        valid_images, valid_indices = eval_images(config, data.images, data.valid), torch.arange(len(data.valid))
    else:
        valid_images, valid_indices = data.images, data.valid

    # Model and optimizer, fresh or as the checkpoint left them.
    model = (model_from_checkpoint(checkpoint, model_fn) if checkpoint else build_model(config)).to(device)
    if ranks.is_distributed and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the batch statistics of every rank's share
    t = config.training
    optimizer, scheduler = build_optimizer(model, t)
    trainer = Trainer(model, optimizer, scheduler, verbose=verbose, amp=t.amp, compile=t.compile,
                      binarize=config.data.binarize, patience=t.patience, ema=t.ema, ranks=ranks)
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CliError(f'{model_fn}: cannot resume from it ({first_line(e)})')
    ranks.seed_stream(t.seed, len(trainer.history))
    if verbose >= 2:
        print(model, optimizer, sep='\n')
    if verbose >= 1:
        print(summary(config, model, device, len(data.train), len(data.valid), len(trainer.history), ranks))
    run_log = None
    if log_folder:  # made once the data and the model are known to be good: a refused run leaves no folder
        prepare_log_dir(log_folder, options.resume, options.overwrite)
        run_log = RunLog(log_folder, config, trainer.history, steps_per_epoch(len(data.train), t.batch_size),
                         len(data.train), valid_images, valid_indices, options.log_every_n_steps,
                         options.log_images_every)
        if not run_log.has_tensorboard and verbose >= 1:
            print(f'note: the tensorboard package is not installed: the log in {log_folder} is metrics.csv '
                  f'alone; pip install -r requirements.txt adds TensorBoard\'s event files')
    try:
        train_and_save(config, model_fn, trainer, data, valid_images, valid_indices, device, ranks, run_log)
    finally:
        if run_log is not None:
            run_log.close()
    if verbose >= 1:
        print(ending(config, model_fn, trainer.history, len(data.train)))


def log_dir(options):
    return None if options.no_log else options.log_dir or default_log_dir(options.model_fn)


def training_data(config, given, checkpoint, model_fn, ranks):
    """The config completed from the data (the image shape, the class indices and, for a new run, the
    length that the flags leave out) and the training set with its split (data_loader.run_images).
    On several ranks the images are memory-mapped from a cache file, whose pages the ranks of a
    machine share, and the first rank of each machine reads first, so that the cache is written once."""
    if checkpoint is None and config.data.target_labels:
        names = class_names(config.data.dataset, config.data.data_dir)
        config = config.replace(target_labels=class_indices(config.data.target_labels, names))
    if ranks.local_rank > 0:
        ranks.barrier()
    data = run_images(config, shared=ranks.is_distributed)
    if ranks.local_rank == 0:
        ranks.barrier()
    shape = list(data.images.shape[1:])
    if checkpoint is not None and shape != list(config.model.image_shape):
        raise CliError(f'{model_fn} was trained on images of {shape_text(config.model.image_shape)}; '
                       f'--data_dir {config.data.data_dir} gives {shape_text(shape)}')
    if len(data.valid) < ranks.size:
        raise CliError(f'--train_ratio {config.training.train_ratio}: leaves {len(data.valid)} valid images for '
                       f'{ranks.size} ranks, which validate one share each')
    config = config.replace(image_shape=shape)
    check_code_size(config)
    if checkpoint is None:
        check_learnable(data.images, data.train)
        config = fit_length(config, given, len(data.train))
    return config, data


def check_learnable(images, indices, chunk=4096):
    """Training images (images[indices]) that are all the same leave nothing to learn but that one
    image. Compared a chunk at a time: no copy of the training set."""
    first = images[indices[:1]]
    if any(not bool((images.index_select(0, part) == first).all()) for part in indices.split(chunk)):
        return
    if len(indices) > 1:
        raise CliError(f'all {len(indices)} training images are identical: there is nothing to learn from them but '
                       f'that one image')


def check_code_size(config):
    """A code as large as the image can learn the identity map and nothing else."""
    m = config.model
    n_values = math.prod(m.image_shape)
    if m.btl_size >= n_values and not (m.noise or m.l1 or m.sparsity):
        raise CliError(f'--btl_size {m.btl_size} >= {n_values} values per image is an overcomplete code, which can '
                       f'learn the identity map and nothing else; add a regularizer: --noise, --l1 or --sparsity')


def train_and_save(config, model_fn, trainer, data, valid_images, valid_indices, device, ranks, run_log):
    """Training, with a checkpoint saved after every epoch, then the epoch's log; a signal stops it
    cleanly. The checkpoint keeps the config in its parts, not the options of this one run."""
    saved_config = config.saved()
    try:
        with stop_on_signals(trainer) as save_in_progress:
            def save(trainer):
                with save_in_progress():
                    save_checkpoint(model_fn, {**trainer.state_dict(), **saved_config})
                    if run_log is not None:
                        run_log.write_epoch(trainer)

            finished = trainer.train(data.images.to(device), data.train.to(device), valid_indices.to(device),
                                     config.training.n_epochs, config.training.batch_size,
                                     on_epoch_end=save if ranks.is_main else None,
                                     valid_images=valid_images.to(device), on_step=run_log and run_log.step)
    except NonFiniteLoss as e:
        raise RunStopped(f'{e}; {saved_so_far(trainer.history, model_fn)}', 1)
    except RuntimeError as e:
        # torch._dynamo is tested for only with --compile, which has imported it (a slow import otherwise).
        if config.training.compile and isinstance(e, torch._dynamo.exc.TorchDynamoException):
            raise RunStopped(f'--compile: torch.compile failed ({first_line(e)}); train without --compile; '
                             f'{saved_so_far(trainer.history, model_fn)}', 1)
        if not ranks.is_distributed:
            raise
        # A collective failed: another rank ended (killed, or stopped by an error of its own).
        raise RunStopped(f'rank {ranks.rank} lost the other ranks ({distributed.collective_error(e)}); '
                         f'{saved_so_far(trainer.history, model_fn)}', 1)
    if not finished:
        launcher = 'torchrun ... train.py' if ranks.is_distributed else 'python train.py'
        raise RunStopped(f'{signal.Signals(trainer.stop_requested).name} in epoch {len(trainer.history) + 1}: '
                         f'{saved_so_far(trainer.history, model_fn)}; resume with: {launcher} --model_fn {model_fn} '
                         f'--resume{" (on any number of ranks)" if ranks.is_distributed else ""}',
                         128 + trainer.stop_requested)


def train_or_reuse(config, options, given, device=torch.device('cpu'), on_resume=None):
    """The one rule for a checkpoint that a script trains on the user's behalf (options.model_fn): one
    trained with the same config is reused when finished and resumed when interrupted (after
    on_resume(checkpoint), when given); one trained with another config is refused, naming the first
    flag that differs, unless options.overwrite, which trains it again. given: the names of the flags
    set for this run, the others take their defaults. Returns what was done: 'reused', 'resumed' or
    'trained'."""
    model_fn = options.model_fn
    if os.path.exists(model_fn):
        checkpoint = load_checkpoint(model_fn)
        differing = first_difference(checkpoint['config'], config, given)
        if differing is None:
            if is_finished(checkpoint):
                return 'reused'
            if on_resume is not None:
                on_resume(checkpoint)
            # resumed with the run's own config, where the data are and how fast it runs from this one
            train(config, options._replace(resume=True, overwrite=False), given & REUSE_IGNORES, device=device)
            return 'resumed'
        if not options.overwrite:
            name, saved, asked = differing
            raise CliError(f'{model_fn} was trained with --{name} {saved} where this run gives --{name} {asked}; '
                           f'give --overwrite to train it again (nothing was changed)')
    train(config, options._replace(resume=False, overwrite=True), given, device=device)
    return 'trained'


def first_difference(saved, config, given):
    """(flag, saved value, asked value) of the first flag whose value in a checkpoint's config differs
    from config's; None when none does. The image shape is the data's, and so is the length that
    fit_length chose where the flags given left it out."""
    fitted = {'batch_size', 'n_epochs'} - given
    saved_flags, asked = saved.flags(), config.flags()
    for name, value in asked.items():
        if name in REUSE_IGNORES | fitted or name == 'image_shape' or saved_flags[name] == value:
            continue
        return name, saved_flags[name], value
    return None


def is_finished(checkpoint):
    """Whether the run in a checkpoint trained all its epochs, or stopped early for want of patience."""
    history, t = checkpoint['history'], checkpoint['config'].training
    return len(history) >= t.n_epochs or out_of_patience(history, t.patience)


def too_few_steps(config, n_train, n_epochs_done):
    """A one-line warning when the epochs trained took fewer than --min_steps optimizer steps, with
    the --n_epochs that would reach it; None otherwise."""
    t = config.training
    per_epoch = steps_per_epoch(n_train, t.batch_size)
    steps = per_epoch * n_epochs_done
    if steps >= t.min_steps:
        return None
    return (f'warning: {n_epochs_done} epochs of {per_epoch} batches of {t.batch_size} images took {steps} '
            f'optimizer steps, fewer than the {t.min_steps} (--min_steps) that a model needs to learn much; '
            f'the model may be under-trained: give --n_epochs {math.ceil(t.min_steps / per_epoch)}, or leave '
            f'--n_epochs and --batch_size out to fit them to the data')


def ending(config, model_fn, history, n_train):
    """What a finished run says: why it stopped if early, whether it took too few steps, and what
    the file holds (the best epoch)."""
    lines = []
    if len(history) < config.training.n_epochs:
        lines.append(f'stopped early: no better valid loss in the last {config.training.patience} epochs')
    else:
        lines.append(too_few_steps(config, n_train, len(history)))
    lines.append(f'saved {model_fn} ({saved_so_far(history, model_fn)})')
    return '\n'.join(line for line in lines if line)


def summary(config, model, device, n_train, n_valid, n_done, ranks):
    """The few lines that --verbose 1 prints before the first epoch."""
    t = config.training
    where = f'{ranks.size} ranks, each on a {device.type.upper()}' if ranks.is_distributed else device
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        where = f'{where} ({threads} thread{"s" * (threads > 1)}{" a rank" * ranks.is_distributed})'
    lines = [f'{config.data.dataset}: {n_train} train / {n_valid} valid images of '
             f'{shape_text(config.model.image_shape)}',
             f'{model.__class__.__name__}: {sum(p.numel() for p in model.parameters()):,} parameters on {where}',
             f'{t.n_epochs} epochs of {steps_per_epoch(n_train, t.batch_size)} batches of {t.batch_size} images' +
             (', shared out among the ranks' if ranks.is_distributed else '')]
    if n_done:
        lines.append(f'resuming after epoch {n_done}')
    if t.compile:
        lines.append('--compile: the first epoch compiles the loss (up to a minute); the epochs after it run faster')
    return '\n'.join(lines)


def shape_text(shape):
    return ' x '.join(map(str, shape))
