"""Trains an AutoEncoder or a VAE on MNIST, Fashion-MNIST or a folder of images and saves it as a .pth
checkpoint.

    python train.py --model_fn ae.pth --btl_size 2
"""
import argparse
import math
import signal
import sys

import torch

from checkpoint import (check_fresh, check_writable, resumable_flags, resume_config, save_checkpoint, saved_so_far,
                        stop_on_signals)
from config import DEFAULTS, merge_config, saved_parts
import distributed
from data_loader import (BINARIZE_SEED, DATASETS, binarize_once, class_indices, class_names, load_dataset,
                         selected_indices, split_train_valid)
from distributions import DEFAULT_LIKELIHOOD, LIKELIHOODS, PRIORS, REGISTRIES, part_options
from model import ACTIVATIONS, ARCHITECTURE_FLAGS, ARCHITECTURES, build_model, model_from_checkpoint
from runlog import LOG_EVERY_N_STEPS, LOG_IMAGES_EVERY, RunLog, default_log_dir, prepare_log_dir
from trainer import NonFiniteLoss, Trainer, build_optimizer
from utils import (ArgumentParser, CliError, add_gpu_flag, add_threads_flag, default_to_none, first_line, float_in,
                   int_at_least, is_main_process, run_cli, set_seed, set_threads)


def add_part_flags(g):
    """--prior and --likelihood, whose choices and help come from the registries of
    distributions.py, and the flags of each part's own options."""
    whose = {'prior': 'VAE prior', 'likelihood': "the decoder's distribution of the pixels, the reconstruction "
                                                 'loss of both models'}
    defaults = {'prior': '%(default)s', 'likelihood': ', '.join(f'{name} for --model {model}' for model, name
                                                               in DEFAULT_LIKELIHOOD.items())}
    for kind, registry in REGISTRIES.items():
        choices = '; '.join(f'{name}: {part.help}' for name, part in registry.items())
        g.add_argument(f'--{kind}', choices=list(registry),
                       help=f'{whose[kind]}: {choices} (default: {defaults[kind]})')
    for option, (kind, name, type_, _, help_) in part_options().items():
        g.add_argument(f'--{option}', type=type_, help=f'--{kind} {name}: {help_} (default: %(default)s)')


def add_model_flags(p):
    """The flags of the network and of its loss."""
    g = p.add_argument_group('model')
    g.add_argument('--model', choices=['ae', 'vae'],
                   help='ae: deterministic AutoEncoder; vae: variational autoencoder (default: %(default)s)')
    g.add_argument('--n_layers', type=int_at_least(1),
                   help='number of hidden layers on each side; their sizes fall in equal steps from the '
                        'number of input values (784 for MNIST) toward --btl_size, e.g. 784-654-523-393-263-132-2 '
                        'for 5 layers and --btl_size 2 '
                        '(default: %(default)s)')
    g.add_argument('--max_hidden_size', type=int_at_least(1),
                   help='with --n_layers: the widest hidden layer; the sizes of larger inputs (a colour folder) fall '
                        'from this instead of the number of input values (default: %(default)s)')
    g.add_argument('--hidden_sizes', type=int_at_least(1), nargs='+',
                   help='explicit hidden sizes of the encoder, e.g. 512 256 128, mirrored in the decoder; '
                        'overrides --n_layers (with --arch conv: channels; --arch lstm: LSTM units)')
    g.add_argument('--btl_size', type=int_at_least(1), help='size of the code (default: %(default)s)')
    g.add_argument('--use_dropout', action='store_true',
                   help='Dropout after each activation instead of BatchNorm')
    g.add_argument('--dropout_p', type=float_in(0, 1, low_open=False),
                   help='dropout probability in [0, 1), with --use_dropout (default: %(default)s)')
    g.add_argument('--bn_eps', type=float_in(0, 1),
                   help="BatchNorm's eps, added to the variance it divides by; 1e-3 keeps a unit that never fired "
                        'in training from blowing up an unusual image in eval mode (default: %(default)s)')
    add_part_flags(g)
    g.add_argument('--iwae_k', type=int_at_least(1),
                   help='VAE: train on the importance-weighted bound with K samples per image (Burda et al. 2016) '
                        'instead of the ELBO; validation still measures the ELBO (default: %(default)s)')
    g.add_argument('--gated', action=argparse.BooleanOptionalAction,
                   help='--arch mlp: hidden layers of gated units, h = (W1 x) * sigmoid(W2 x), in place of Linear + '
                        'activation (default: off)')
    g.add_argument('--kl_weight', type=float_in(0, float('inf'), low_open=False),
                   help='VAE weight of the KL term, beta in a beta-VAE (default: %(default)s)')
    g.add_argument('--kl_anneal', type=int_at_least(0),
                   help='VAE: raise the KL weight linearly from 0 over the first N epochs (default: %(default)s)')
    g.add_argument('--arch', choices=list(ARCHITECTURES),
                   help='; '.join(f'{name}: {arch.help}' for name, arch in ARCHITECTURES.items()) +
                        ' (default: %(default)s)')
    g.add_argument('--activation', choices=list(ACTIVATIONS),
                   help='activation in every Block; none, with --use_dropout --dropout_p 0 and MSE, makes a linear '
                        'autoencoder, which learns the PCA subspace (default: %(default)s)')
    g.add_argument('--tied', action='store_true',
                   help='--arch mlp: each decoder Linear uses the transposed weight of its mirror encoder Linear')


def add_regularizer_flags(p):
    """Denoising and sparse codes."""
    g = p.add_argument_group('regularizers')
    g.add_argument('--noise', choices=['gaussian', 'masking', 'salt_pepper'],
                   help='denoising: corrupt the training inputs afresh each batch; the loss compares with the '
                        'clean input')
    g.add_argument('--noise_level', type=float_in(0, float('inf')),
                   help='standard deviation (gaussian) or share of the pixels (masking: set to 0, the rest scaled '
                        'by 1 / (1 - share); salt_pepper: set to 0 or 1) (default: %(default)s)')
    g.add_argument('--l1', type=float_in(0, float('inf'), low_open=False),
                   help='AE: L1 penalty on the code activations, times this lambda (default: %(default)s)')
    g.add_argument('--sparsity', type=float_in(0, 1),
                   help='AE: target mean activation RHO of each code unit (the code passes through a sigmoid); '
                        'adds --sparsity_weight x KL(RHO || mean activation)')
    g.add_argument('--sparsity_weight', type=float_in(0, float('inf'), low_open=False),
                   help='BETA, the weight of the --sparsity penalty (default: %(default)s)')


def add_training_flags(p):
    """The optimisation and the run."""
    g = p.add_argument_group('training')
    g.add_argument('--n_epochs', type=int_at_least(1),
                   help='epochs to train (default: %(default)s, or on a small data set as many as --min_steps '
                        'optimizer steps take)')
    g.add_argument('--batch_size', type=int_at_least(1),
                   help=f'images per optimizer step (default: %(default)s, or a {MIN_BATCHES_PER_EPOCH}th of the '
                        f'training images when that is less, but at least {MIN_FITTED_BATCH})')
    g.add_argument('--min_steps', type=int_at_least(1),
                   help='without --n_epochs, train for at least this many optimizer steps: a few hundred images '
                        'make short epochs, and 20 of them teach a model little (default: %(default)s)')
    g.add_argument('--train_ratio', type=float_in(0, 1),
                   help='share of the training set used for training, the rest validates (default: %(default)s)')
    g.add_argument('--optimizer', choices=['adam', 'adamw'], help='(default: %(default)s)')
    g.add_argument('--lr', type=float_in(0, float('inf')), help='learning rate (default: %(default)s)')
    g.add_argument('--weight_decay', type=float_in(0, float('inf'), low_open=False), help='(default: %(default)s)')
    g.add_argument('--scheduler', choices=['none', 'cosine'],
                   help='cosine: anneal the learning rate to 0 over --n_epochs (default: %(default)s)')
    g.add_argument('--patience', type=int_at_least(0),
                   help='stop early after N epochs without a better valid loss; the best epoch is kept either way '
                        '(default: %(default)s, never)')
    g.add_argument('--ema', type=float_in(0, 1, low_open=False), metavar='DECAY',
                   help='validate and save an exponential moving average of the weights, which moves a share '
                        '1 - DECAY toward them after every step (0.999 averages over the last thousand or so steps; '
                        'IAF and Efficient-VDVAE evaluate such averages); 0: the weights themselves '
                        '(default: %(default)s)')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction,
                   help='run the forward passes under bf16 autocast: faster matrix products where the hardware '
                        'has bf16 units (Intel AMX, NVIDIA Ampere and later), though not for small models on a '
                        'GPU, whose time goes to launching kernels; weights, optimizer state and losses stay fp32 '
                        '(default: off)')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction,
                   help='torch.compile the loss, forward and backward, replayed as CUDA graphs on a GPU; the first '
                        'epoch compiles (up to a minute), the later ones run faster (default: off)')
    g.add_argument('--seed', type=int, help='seeds the split, the weights and the batches (default: %(default)s)')
    g.add_argument('--verbose', type=int, choices=[0, 1, 2], default=1,
                   help='0: silent; 1: a short summary and one line per epoch; 2: the model, the optimizer and a '
                        'per-step progress bar too (progress bars only on a terminal) (default: %(default)s)')


def add_data_flags(p):
    """What the model is trained on."""
    g = p.add_argument_group('data')
    g.add_argument('--dataset', choices=list(DATASETS),
                   help='folder: your own images in --data_dir, in class folders or not (default: %(default)s)')
    g.add_argument('--data_dir',
                   help='mnist, fashion_mnist: the folder with the IDX files, also searched in torchvision\'s '
                        'layout (DATA_DIR/MNIST/raw, DATA_DIR/FashionMNIST/raw); folder: the folder of images, '
                        'or of train/ and test/ folders of images (default: %(default)s)')
    g.add_argument('--target_labels', nargs='+',
                   help='train on these classes only, by index or name, e.g. 0 1 3 8 or cats dogs')
    g.add_argument('--image_size', type=int_at_least(1), nargs=2, metavar=('H', 'W'),
                   help='resize every image to H x W (default: keep the size, which must then be the same for '
                        'all images)')
    g.add_argument('--binarize', action=argparse.BooleanOptionalAction,
                   help='binary pixels, drawn from a Bernoulli of each intensity: afresh in every training batch, '
                        f'once for the valid and test images (seed {BINARIZE_SEED}), so that every model is scored '
                        'on the same binary images (default: off)')
    g.add_argument('--channels', type=int, choices=[1, 3],
                   help='convert every image to gray (1) or colour (3) (default: keep them as they are, which '
                        'must then be the same kind for all images)')


def add_log_flags(p):
    """Where the run's log goes (runlog.py) and how often it takes steps and images."""
    g = p.add_argument_group('log')
    where = g.add_mutually_exclusive_group()
    where.add_argument('--log_dir',
                       help='folder of the run\'s log: TensorBoard event files and metrics.csv, one row per epoch '
                            '(default: MODEL_log beside --model_fn MODEL.pth)')
    where.add_argument('--no_log', action='store_true', help='write no log, only the checkpoint')
    g.add_argument('--log_every_n_steps', type=int_at_least(0),
                   help=f'log the training loss every N optimizer steps as well as per epoch, 0: per epoch only '
                        f'(default: {LOG_EVERY_N_STEPS})')
    g.add_argument('--log_images_every', type=int_at_least(0), metavar='N',
                   help=f'log fixed valid images and their reconstructions (a VAE: samples too) after the first '
                        f'epoch and every N-th, 0: never (default: {LOG_IMAGES_EVERY})')


def define_argparser():
    p = ArgumentParser(description=__doc__.strip().splitlines()[0], allow_abbrev=False,
                       epilog='Under torchrun (torchrun --nproc_per_node N train.py ...) the same flags train one '
                              'model on N processes; --gpu_id -1 runs them on CPUs, --gpu_id G on GPUs G to G + N - 1.')
    p.add_argument('--model_fn', required=True, help='where to save the checkpoint, e.g. ae.pth')
    add_gpu_flag(p)
    add_threads_flag(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument('--resume', action='store_true',
                   help=f'continue the run saved in --model_fn with its saved flags (and its log); besides --gpu_id, '
                        f'--verbose and the log\'s flags, only these may be given with it: {resumable_flags()}')
    g.add_argument('--overwrite', action='store_true',
                   help='start a new run even though --model_fn exists, replacing it (without --resume or '
                        '--overwrite an existing file is never touched)')
    for add_flags in (add_model_flags, add_regularizer_flags, add_training_flags, add_data_flags, add_log_flags):
        add_flags(p)
    return default_to_none(p, DEFAULTS)


def parse_args(p, argv):
    """The flags of argv as (config, given): the run's config (merge_config: the defaults under the
    flags given, with train.py's own flags such as --model_fn) and the names of the config's flags
    that argv gives. A flag that the config cannot use, or a combination that makes no sense, is
    refused in one line."""
    flags = vars(p.parse_args(argv))
    given = {name for name, value in flags.items() if name in DEFAULTS and value is not None}
    config = {**flags, **merge_config(flags)}
    refusal = incompatible_flags(config, given) or refused_log_flags(flags)
    if refusal:
        p.error(refusal)
    return config, given


def refused_log_flags(flags):
    for name in ('log_every_n_steps', 'log_images_every'):
        if flags['no_log'] and flags[name] is not None:
            return f'--{name} sets what the log holds, and --no_log writes none'
    return None


def is_vae(c):
    return c['model'] == 'vae'


def sizes_from_n_layers(c):
    """--n_layers and --max_hidden_size set the hidden sizes that --hidden_sizes would give instead."""
    return 'is overridden by --hidden_sizes' if c['hidden_sizes'] else None


# Flags that only some configs use: name -> a rule giving, for a config, why that flag does nothing
# there (None where it is used). A flag given where its rule says no is refused, never ignored.
AE_ONLY = 'applies to --model ae only (the VAE has its own KL term on the code)'
VAE_ONLY = 'applies to --model vae only'
USED_ONLY_IF = {
    'l1': lambda c: None if not is_vae(c) else AE_ONLY,
    'sparsity': lambda c: None if not is_vae(c) else AE_ONLY,
    'sparsity_weight': lambda c: None if c['sparsity'] is not None else 'weighs the --sparsity penalty, which is off',
    'kl_weight': lambda c: None if is_vae(c) else VAE_ONLY,
    'kl_anneal': lambda c: None if is_vae(c) else VAE_ONLY,
    'prior': lambda c: None if is_vae(c) else VAE_ONLY,
    'iwae_k': lambda c: None if is_vae(c) else VAE_ONLY,
    'dropout_p': lambda c: None if c['use_dropout'] else 'applies to --use_dropout only (BatchNorm has no dropout)',
    'bn_eps': lambda c: 'applies to BatchNorm, which --use_dropout has not' if c['use_dropout'] else None,
    'n_layers': sizes_from_n_layers,
    'max_hidden_size': sizes_from_n_layers,
    'noise_level': lambda c: None if c['noise'] else 'sets the level of --noise, which is off',
}


def architecture_rule(flag, rule=None):
    """A flag of ARCHITECTURE_FLAGS is refused where the architecture does not read it, then by its own rule."""
    def used(c):
        arch = ARCHITECTURES[c['arch']]
        if flag not in arch.flags:
            reads = ', '.join(f'--{name}' for name in sorted(arch.flags))
            return f'does not apply to --arch {c["arch"]} ({f"it reads {reads}" if reads else "it has no Blocks"})'
        return rule(c) if rule else None
    return used


USED_ONLY_IF.update({flag: architecture_rule(flag, USED_ONLY_IF.get(flag)) for flag in ARCHITECTURE_FLAGS})
# The options of the parts apply to their part only (a prior's to a VAE's).
USED_ONLY_IF.update({option: (lambda c, kind=kind, name=name:
                              None if c[kind] == name and (kind != 'prior' or is_vae(c)) else
                              f'applies to --{kind} {name} only')
                     for option, (kind, name, *_) in part_options().items()})
# Flags that only some runs use, told from the flags given.
USED_ONLY_WITHOUT = {'min_steps': ('n_epochs', 'sets the epochs when --n_epochs is left out')}


def incompatible_flags(c, given):
    """The reason, in one line, why the config c makes no sense, or why one of the flags given
    (their names) would do nothing in it; None when neither."""
    batch_norm = 'use_dropout' in ARCHITECTURES[c['arch']].flags and not c['use_dropout']
    if PRIORS[c['prior']].uses_inputs and (c['model'] != 'vae' or batch_norm):
        return (f'--prior {c["prior"]} needs --model vae and --use_dropout: BatchNorm would take the prior\'s inputs '
                f'into its batch statistics')
    if c['iwae_k'] > 1 and ({'kl_weight', 'kl_anneal'} & given):
        return '--iwae_k trains on the importance-weighted bound, which has no KL term to weigh or warm up'
    if c['gated'] and 'gated' in ARCHITECTURES[c['arch']].flags and (c['tied'] or 'activation' in given):
        return '--gated takes neither --tied (a gated layer has two weights) nor --activation (the gate replaces it)'
    if c['binarize'] and not LIKELIHOODS[c['likelihood']].takes_binary_pixels:
        return (f'--likelihood {c["likelihood"]} is a density of grayscale pixels; binary pixels (--binarize) take '
                f'--likelihood bernoulli or mse')
    if c['noise'] in ('masking', 'salt_pepper') and c['noise_level'] > 1:
        return f'--noise_level {c["noise_level"]}: --noise {c["noise"]} takes a share of the pixels, in (0, 1]'
    for name in sorted(given & USED_ONLY_WITHOUT.keys()):
        other, reason = USED_ONLY_WITHOUT[name]
        if other in given:
            return f'--{name} {reason}'
    for name in sorted(given & USED_ONLY_IF.keys()):
        reason = USED_ONLY_IF[name](c)
        if reason:
            return f'--{name} {reason}'
    return None


# Without --batch_size, an epoch has at least this many optimizer steps, and a batch at least
# MIN_FITTED_BATCH images (or all of them): BatchNorm's statistics over fewer are too noisy to train
# on (Wu and He 2018, Group Normalization, Fig. 1: its error rises quickly below 16 images a batch).
# On 64 training images, batches of 4 reconstructed worse than PCA-2, and batches of 16 better.
MIN_BATCHES_PER_EPOCH = 16
MIN_FITTED_BATCH = 16


def steps_per_epoch(n_train, batch_size):
    return math.ceil(n_train / batch_size)


def fit_length(config, given, n_train):
    """The batch size and the epochs that the flags leave out, fitted to n_train training images: the
    defaults, or on a small data set a batch of a MIN_BATCHES_PER_EPOCH-th of the images (but no fewer
    than MIN_FITTED_BATCH) and epochs enough for --min_steps optimizer steps. Fashion-MNIST's 48,000
    images keep the defaults."""
    if 'batch_size' not in given:
        smallest = min(MIN_FITTED_BATCH, n_train)
        config['batch_size'] = min(config['batch_size'], max(smallest, n_train // MIN_BATCHES_PER_EPOCH))
    if 'n_epochs' not in given:
        needed = math.ceil(config['min_steps'] / steps_per_epoch(n_train, config['batch_size']))
        config['n_epochs'] = max(config['n_epochs'], needed)


def too_few_steps(config, n_train, n_epochs_done):
    """A one-line warning when the epochs trained took fewer than --min_steps optimizer steps, with
    the --n_epochs that would reach it; None otherwise."""
    per_epoch = steps_per_epoch(n_train, config['batch_size'])
    steps = per_epoch * n_epochs_done
    if steps >= config['min_steps']:
        return None
    return (f'warning: {n_epochs_done} epochs of {per_epoch} batches of {config["batch_size"]} images took {steps} '
            f'optimizer steps, fewer than the {config["min_steps"]} (--min_steps) that a model needs to learn much; '
            f'the model may be under-trained: give --n_epochs {math.ceil(config["min_steps"] / per_epoch)}, or leave '
            f'--n_epochs and --batch_size out to fit them to the data')


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
    n_values = math.prod(config['image_shape'])
    if config['btl_size'] >= n_values and not (config['noise'] or config['l1'] or config['sparsity']):
        raise CliError(f'--btl_size {config["btl_size"]} >= {n_values} values per image is an overcomplete code, '
                       f'which can learn the identity map and nothing else; add a regularizer: --noise, --l1 or '
                       f'--sparsity')


def training_data(config, given, resuming, ranks):
    """The whole training set as uint8 images, its train indices, the valid indices into the images to
    validate on, and those images: the same images, or with --binarize the valid images alone,
    binarized once (the training batches are drawn afresh each time by the Trainer, the valid images
    once, so that every epoch and every run is scored on the same binary images).
    Completes config from the data: the image shape, the class indices and, for a new run, the
    length that the flags leave out. The images are never copied: --target_labels and the split are
    indices. On several ranks the images are memory-mapped from a cache file, whose pages the ranks of a
    machine share, and the first rank of each machine reads first, so that the cache is written once."""
    if ranks.local_rank > 0:
        ranks.barrier()
    images, labels = load_dataset(config['dataset'], config['data_dir'], True, image_size=config['image_size'],
                                  channels=config['channels'], shared=ranks.is_distributed)
    if ranks.local_rank == 0:
        ranks.barrier()
    if config['target_labels'] and not resuming:
        config['target_labels'] = class_indices(config['target_labels'], class_names(config['dataset'],
                                                                                     config['data_dir']))
    selected = selected_indices(labels, config['target_labels'])
    train_indices, valid_indices = (selected[split] for split in
                                    split_train_valid(len(selected), config['train_ratio'], config['seed']))
    if resuming and list(images.shape[1:]) != list(config['image_shape']):
        raise CliError(f'{config["model_fn"]} was trained on images of {shape_text(config["image_shape"])}; '
                       f'--data_dir {config["data_dir"]} gives {shape_text(images.shape[1:])}')
    if len(valid_indices) < ranks.size:
        raise CliError(f'--train_ratio {config["train_ratio"]}: leaves {len(valid_indices)} valid images for '
                       f'{ranks.size} ranks, which validate one share each')
    config['image_shape'] = list(images.shape[1:])
    check_code_size(config)
    if not resuming:
        check_learnable(images, train_indices)
        fit_length(config, given, len(train_indices))
    if config['binarize']:  # the valid images alone, binarized once (not a copy of the whole set)
        return images, train_indices, torch.arange(len(valid_indices)), binarize_once(images, indices=valid_indices)
    return images, train_indices, valid_indices, images


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    config, given = parse_args(define_argparser(), argv)
    set_threads(config['threads'])
    ranks, device = distributed.start(config['gpu_id'])
    try:
        train_run(config, given, ranks, device)
    except RuntimeError:
        if ranks.is_main:
            raise
        sys.exit(1)  # another rank ended, and rank 0 says why in one line
    ranks.end()


def log_dir(config):
    return None if config['no_log'] else config['log_dir'] or default_log_dir(config['model_fn'])


def train_run(config, given, ranks, device):
    # Arguments: the flags, or with --resume the flags saved in the checkpoint.
    checkpoint = None
    if config['resume']:
        config, checkpoint = resume_config(config, given)
    model_fn, verbose = config['model_fn'], config['verbose'] if ranks.is_main else 0
    log_folder = log_dir(config) if ranks.is_main else None  # the one rank that writes files
    check_fresh(model_fn, config['resume'], config['overwrite'])
    if ranks.is_main:
        check_writable(model_fn)
        if log_folder:
            prepare_log_dir(log_folder, config['resume'], config['overwrite'])
    set_seed(config['seed'])

    images, train_indices, valid_indices, valid_images = training_data(config, given, checkpoint is not None, ranks)

    # Model and optimizer, fresh or as the checkpoint left them.
    model = (model_from_checkpoint(checkpoint, model_fn) if checkpoint else build_model(config)).to(device)
    if ranks.is_distributed and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the batch statistics of every rank's share
    optimizer, scheduler = build_optimizer(model, config)
    trainer = Trainer(model, optimizer, scheduler, verbose=verbose, amp=config['amp'], compile=config['compile'],
                      binarize=config['binarize'], patience=config['patience'], ema=config['ema'], ranks=ranks)
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CliError(f'{model_fn}: cannot resume from it ({first_line(e)})')
    ranks.seed_stream(config['seed'], len(trainer.history))
    if verbose >= 2:
        print(model, optimizer, sep='\n')
    if verbose >= 1:
        print(summary(config, model, device, len(train_indices), len(valid_indices), len(trainer.history), ranks))
    run_log = None
    if log_folder:
        run_log = RunLog(log_folder, saved_parts(config), trainer.history,
                         steps_per_epoch(len(train_indices), config['batch_size']), len(train_indices),
                         valid_images, valid_indices, first_given(config['log_every_n_steps'], LOG_EVERY_N_STEPS),
                         first_given(config['log_images_every'], LOG_IMAGES_EVERY))
        if not run_log.has_tensorboard and verbose >= 1:
            print(f'note: the tensorboard package is not installed: the log in {log_folder} is metrics.csv '
                  f'alone; pip install -r requirements.txt adds TensorBoard\'s event files')
    try:
        train_and_save(config, trainer, images, train_indices, valid_indices, valid_images, device, ranks, run_log)
    finally:
        if run_log is not None:
            run_log.close()
    if verbose >= 1:
        print(ending(config, trainer.history, len(train_indices)))


def first_given(value, default):
    return default if value is None else value


def train_and_save(config, trainer, images, train_indices, valid_indices, valid_images, device, ranks, run_log):
    """Training, with a checkpoint saved after every epoch, then the epoch's log; a signal stops it
    cleanly. The checkpoint keeps the config in its parts, not the flags of this one run (--model_fn,
    --gpu_id, --verbose, ...)."""
    model_fn, config_parts = config['model_fn'], saved_parts(config)
    try:
        with stop_on_signals(trainer) as save_in_progress:
            def save(trainer):
                with save_in_progress():
                    save_checkpoint(model_fn, {**trainer.state_dict(), **config_parts})
                    if run_log is not None:
                        run_log.write_epoch(trainer)

            finished = trainer.train(images.to(device), train_indices.to(device), valid_indices.to(device),
                                     config['n_epochs'], config['batch_size'],
                                     on_epoch_end=save if ranks.is_main else None,
                                     valid_images=valid_images.to(device), on_step=run_log and run_log.step)
    except NonFiniteLoss as e:
        stop(f'stopped: {e}; {saved_so_far(trainer.history, model_fn)}', 1)
    except RuntimeError as e:
        # torch._dynamo is tested for only with --compile, which has imported it (a slow import otherwise).
        if config['compile'] and isinstance(e, torch._dynamo.exc.TorchDynamoException):
            stop(f'stopped: --compile: torch.compile failed ({first_line(e)}); train without --compile; '
                 f'{saved_so_far(trainer.history, model_fn)}', 1)
        if not ranks.is_distributed:
            raise
        # A collective failed: another rank ended (killed, or stopped by an error of its own).
        stop(f'stopped: rank {ranks.rank} lost the other ranks ({distributed.collective_error(e)}); '
             f'{saved_so_far(trainer.history, model_fn)}', 1)
    if not finished:
        launcher = 'torchrun ... train.py' if ranks.is_distributed else 'python train.py'
        stop(f'{signal.Signals(trainer.stop_requested).name} in epoch {len(trainer.history) + 1}: '
             f'{saved_so_far(trainer.history, model_fn)}; resume with: {launcher} --model_fn {model_fn} --resume'
             f'{" (on any number of ranks)" if ranks.is_distributed else ""}', 128 + trainer.stop_requested)


def ending(config, history, n_train):
    """What a finished run says: why it stopped if early, whether it took too few steps, and what
    the file holds (the best epoch)."""
    lines = []
    if len(history) < config['n_epochs']:
        lines.append(f'stopped early: no better valid loss in the last {config["patience"]} epochs')
    else:
        lines.append(too_few_steps(config, n_train, len(history)))
    lines.append(f'saved {config["model_fn"]} ({saved_so_far(history, config["model_fn"])})')
    return '\n'.join(line for line in lines if line)


def summary(config, model, device, n_train, n_valid, n_done, ranks):
    """The few lines that --verbose 1 prints before the first epoch."""
    where = f'{ranks.size} ranks, each on a {device.type.upper()}' if ranks.is_distributed else device
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        where = f'{where} ({threads} thread{"s" * (threads > 1)}{" a rank" * ranks.is_distributed})'
    lines = [f'{config["dataset"]}: {n_train} train / {n_valid} valid images of {shape_text(config["image_shape"])}',
             f'{model.__class__.__name__}: {sum(p.numel() for p in model.parameters()):,} parameters on {where}',
             f'{config["n_epochs"]} epochs of {steps_per_epoch(n_train, config["batch_size"])} batches of '
             f'{config["batch_size"]} images' + (f', shared out among the ranks' if ranks.is_distributed else '')]
    if n_done:
        lines.append(f'resuming after epoch {n_done}')
    if config['compile']:
        lines.append('--compile: the first epoch compiles the loss (up to a minute); the epochs after it run faster')
    return '\n'.join(lines)


def shape_text(shape):
    return ' x '.join(map(str, shape))


def stop(message, exit_code):
    """Ends the run with message on stderr (from rank 0 alone on several ranks)."""
    if is_main_process():
        print(f'train.py: {message}', file=sys.stderr)
    sys.exit(exit_code)


if __name__ == '__main__':
    run_cli(main, 'train.py')
