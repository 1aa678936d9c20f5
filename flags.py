"""train.py's flags: the argparse parser whose --help documents every flag, and parse, which turns a
command line into the RunConfig it trains (config.py) and the RunOptions of the run, refusing in one
line a flag that the config cannot use.
"""
import argparse

from checkpoint import resumable_flags
from config import DEFAULTS, MIN_BATCHES_PER_EPOCH, MIN_FITTED_BATCH, RunConfig, RunOptions, refusal
from data_loader import BINARIZE_SEED, DATASETS
from distributions import DEFAULT_LIKELIHOOD, REGISTRIES, part_options
from model import ACTIVATIONS, ARCHITECTURES
from utils import ArgumentParser, add_device_flags, default_to_none, float_in, int_at_least

# The log's flags default to None, so that one given with --no_log is refused; RunOptions has their defaults.
LOG_DEFAULTS = {name: RunOptions._field_defaults[name] for name in ('log_every_n_steps', 'log_images_every')}


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
                        f'(default: {LOG_DEFAULTS["log_every_n_steps"]})')
    g.add_argument('--log_images_every', type=int_at_least(0), metavar='N',
                   help=f'log fixed valid images and their reconstructions (a VAE: samples too) after the first '
                        f'epoch and every N-th, 0: never (default: {LOG_DEFAULTS["log_images_every"]})')


def define_argparser(prog='train.py'):
    p = ArgumentParser(prog=prog, description='Trains an AutoEncoder or a VAE on MNIST, Fashion-MNIST or a folder of '
                                              'images and saves it as a .pth checkpoint.', allow_abbrev=False,
                       epilog='Under torchrun (torchrun --nproc_per_node N train.py ...) the same flags train one '
                              'model on N processes; --gpu_id -1 runs them on CPUs, --gpu_id G on GPUs G to G + N - 1.')
    p.add_argument('--model_fn', required=True, help='where to save the checkpoint, e.g. ae.pth')
    add_device_flags(p)
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


def parse(argv, parser=None, base=None):
    """The command line argv as (config, options, given): the RunConfig it trains (the defaults, under
    the flags of base, a dict such as a recipe's, under the flags given), the RunOptions of the run,
    and the names of the config's flags that argv or base gives. A flag that the config cannot use,
    or a combination that makes no sense, is refused in one line."""
    parser = parser or define_argparser()
    args = vars(parser.parse_args(argv))
    given_flags = {name: value for name, value in args.items() if name in DEFAULTS and value is not None}
    config = RunConfig.from_flags({**(base or {}), **given_flags})
    given = set(base or {}) | set(given_flags)
    reason = refusal(config, given) or refused_log_flags(args)
    if reason:
        parser.error(reason)
    options = RunOptions(**{name: args[name] for name in RunOptions._fields if args[name] is not None})
    return config, options, given


def refused_log_flags(args):
    for name in LOG_DEFAULTS:
        if args['no_log'] and args[name] is not None:
            return f'--{name} sets what the log holds, and --no_log writes none'
    return None


def as_flags(changes):
    """train.py's command-line flags for a dict of config changes, e.g. {'btl_size': 2, 'tied': True}
    gives ['--btl_size', '2', '--tied']."""
    args = []
    for name, value in changes.items():
        if isinstance(value, bool):
            args.append(f'--{name}' if value else f'--no-{name}')
        else:
            args += [f'--{name}', *map(str, value if isinstance(value, list) else [value])]
    return args
