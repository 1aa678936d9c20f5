"""Trains an AutoEncoder or a VAE on MNIST-style images and saves it as a .pth checkpoint.

    python train.py --model_fn ae.pth --btl_size 2
"""
import argparse
import contextlib
import signal
import sys

import torch

from data_loader import DATASETS, load_dataset, select_labels, split_train_valid
from model import ACTIVATIONS, BN_EPS, INPUT_SIZE, build_model, model_from_checkpoint
from trainer import NonFiniteLoss, Trainer
from utils import (ArgumentParser, CliError, check_writable, default_gpu_id, first_line, float_in, get_device,
                   int_at_least, load_checkpoint, run_cli, save_checkpoint, set_seed)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Flags that may be given with --resume: they do not change what is being trained.
RESUMABLE_FLAGS = {'model_fn', 'resume', 'n_epochs', 'gpu_id', 'amp', 'compile', 'data_dir', 'verbose'}


def resumable_flags():
    return ', '.join('--' + f for f in sorted(RESUMABLE_FLAGS))


def define_argparser():
    p = ArgumentParser(description=__doc__.strip().splitlines()[0], allow_abbrev=False)
    p.add_argument('--model_fn', required=True, help='where to save the checkpoint, e.g. ae.pth')
    p.add_argument('--gpu_id', type=int, default=default_gpu_id(),
                   help='CUDA device index, -1 for the CPU (default: 0 when CUDA is available, else -1)')
    p.add_argument('--resume', action='store_true',
                   help=f'continue the run saved in --model_fn with its saved flags; only these may be given '
                        f'with it: {resumable_flags()}')

    g = p.add_argument_group('model')
    g.add_argument('--model', choices=['ae', 'vae'], default='ae',
                   help='ae: deterministic AutoEncoder; vae: variational autoencoder (default: %(default)s)')
    g.add_argument('--n_layers', type=int_at_least(1), default=5,
                   help='number of hidden layers on each side; their sizes fall in equal steps from 784 '
                        'toward --btl_size, e.g. 784-654-523-393-263-132-2 for 5 layers and --btl_size 2 '
                        '(default: %(default)s)')
    g.add_argument('--hidden_sizes', type=int_at_least(1), nargs='+', default=None,
                   help='explicit hidden sizes of the encoder, e.g. 512 256 128, mirrored in the decoder; '
                        'overrides --n_layers (with --arch conv: channels; --arch lstm: LSTM units)')
    g.add_argument('--btl_size', type=int_at_least(1), default=10, help='size of the code (default: %(default)s)')
    g.add_argument('--use_dropout', action='store_true',
                   help='Dropout after each ReLU instead of BatchNorm1d')
    g.add_argument('--dropout_p', type=float_in(0, 1, low_open=False), default=.3,
                   help='dropout probability in [0, 1), with --use_dropout (default: %(default)s)')
    g.add_argument('--bn_eps', type=float_in(0, 1), default=BN_EPS,
                   help="BatchNorm's eps, added to the variance it divides by; 1e-3 keeps a unit that never fired "
                        'in training from blowing up an unusual image in eval mode (default: %(default)s)')
    g.add_argument('--loss', choices=['mse', 'bce'], default=None,
                   help='AutoEncoder reconstruction loss, summed over pixels (default: mse); '
                        'the VAE always uses Bernoulli BCE')
    g.add_argument('--kl_weight', type=float_in(0, float('inf'), low_open=False), default=1.,
                   help='VAE weight of the KL term, beta in a beta-VAE (default: %(default)s)')
    g.add_argument('--kl_anneal', type=int_at_least(0), default=0,
                   help='VAE: raise the KL weight linearly from 0 over the first N epochs (default: %(default)s)')
    g.add_argument('--arch', choices=['mlp', 'conv', 'lstm'], default='mlp',
                   help='mlp: Blocks of Linear layers; conv: Conv2d blocks (3x3, stride 2) with channels from '
                        '--hidden_sizes (default 32 64) and a ConvTranspose2d mirror; lstm: rows as a sequence, '
                        'an LSTM of --hidden_sizes[0] units (default 128) each way (default: %(default)s)')
    g.add_argument('--activation', choices=list(ACTIVATIONS), default='relu',
                   help='activation in every Block; none, with --use_dropout --dropout_p 0 and MSE, makes a linear '
                        'autoencoder, which learns the PCA subspace (default: %(default)s)')
    g.add_argument('--tied', action='store_true',
                   help='--arch mlp: each decoder Linear uses the transposed weight of its mirror encoder Linear')

    g = p.add_argument_group('regularizers')
    g.add_argument('--noise', choices=['gaussian', 'masking', 'salt_pepper'], default=None,
                   help='denoising: corrupt the training inputs afresh each batch; the loss compares with the '
                        'clean input')
    g.add_argument('--noise_level', type=float_in(0, float('inf')), default=.3,
                   help='standard deviation (gaussian) or share of the pixels (masking: set to 0, the rest scaled '
                        'by 1 / (1 - share); salt_pepper: set to 0 or 1) (default: %(default)s)')
    g.add_argument('--l1', type=float_in(0, float('inf'), low_open=False), default=0.,
                   help='AE: L1 penalty on the code activations, times this lambda (default: %(default)s)')
    g.add_argument('--sparsity', type=float_in(0, 1), default=None,
                   help='AE: target mean activation RHO of each code unit (the code passes through a sigmoid); '
                        'adds --sparsity_weight x KL(RHO || mean activation)')
    g.add_argument('--sparsity_weight', type=float_in(0, float('inf'), low_open=False), default=1.,
                   help='BETA, the weight of the --sparsity penalty (default: %(default)s)')

    g = p.add_argument_group('training')
    g.add_argument('--n_epochs', type=int_at_least(1), default=20, help='(default: %(default)s)')
    g.add_argument('--batch_size', type=int_at_least(1), default=256, help='(default: %(default)s)')
    g.add_argument('--train_ratio', type=float_in(0, 1), default=.8,
                   help='share of the training set used for training, the rest validates (default: %(default)s)')
    g.add_argument('--optimizer', choices=['adam', 'adamw'], default='adam', help='(default: %(default)s)')
    g.add_argument('--lr', type=float_in(0, float('inf')), default=1e-3, help='learning rate (default: %(default)s)')
    g.add_argument('--weight_decay', type=float_in(0, float('inf'), low_open=False), default=0.,
                   help='(default: %(default)s)')
    g.add_argument('--scheduler', choices=['none', 'cosine'], default='none',
                   help='cosine: anneal the learning rate to 0 over --n_epochs (default: %(default)s)')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                   help='run the forward passes under bf16 autocast: faster matrix products where the hardware '
                        'has bf16 units (Intel AMX, NVIDIA Ampere and later; python bench.py --amp measures it), '
                        'though slower for small models on a GPU, whose time goes to launching kernels; '
                        'weights, optimizer state and losses stay fp32 (default: off)')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False,
                   help='torch.compile the loss, forward and backward, replayed as CUDA graphs on a GPU: on an H100 '
                        'an epoch of the default AE is about 1.5x faster, after 5-40 s of compiling in the first '
                        'epoch; on the CPU about 6%% faster (default: off)')
    g.add_argument('--seed', type=int, default=1, help='seeds the split, the weights and the batches '
                                                       '(default: %(default)s)')
    g.add_argument('--verbose', type=int, choices=[0, 1, 2], default=1,
                   help='0: silent; 1: one line per epoch; 2: a per-step progress bar too (default: %(default)s)')

    g = p.add_argument_group('data')
    g.add_argument('--dataset', choices=list(DATASETS), default='mnist', help='(default: %(default)s)')
    g.add_argument('--data_dir', default='./data',
                   help='folder with the IDX files, also searched in torchvision\'s layout '
                        '(DATA_DIR/MNIST/raw, DATA_DIR/FashionMNIST/raw) (default: %(default)s)')
    g.add_argument('--target_labels', type=int, nargs='+', default=None,
                   help='train on these classes only, e.g. 0 1 3 8')

    return p


def parse_args(p, argv):
    config = p.parse_args(argv)
    refusal = incompatible_flags(config)
    if refusal:
        p.error(refusal)
    if config.model == 'ae' and config.loss is None:
        config.loss = 'mse'
    return config


def incompatible_flags(c):
    """The reason a combination of flags makes no sense, or None."""
    if c.model == 'vae':
        for flag, given in (('--loss', c.loss is not None), ('--l1', c.l1 > 0), ('--sparsity', c.sparsity is not None)):
            if given:
                return f'{flag} applies to --model ae only (the VAE uses BCE and its own KL term on the code)'
    if c.model == 'ae' and c.kl_anneal:
        return '--kl_anneal applies to --model vae only'
    if c.tied and c.arch != 'mlp':
        return f'--tied needs --arch mlp: --arch {c.arch} has no Linear mirror to tie'
    if c.arch == 'lstm' and c.activation != 'relu':
        return '--activation does not apply to --arch lstm (an LSTM has its own gates)'
    if c.bn_eps != BN_EPS and (c.use_dropout or c.arch == 'lstm'):
        return f'--bn_eps applies to BatchNorm, which {"--use_dropout" if c.use_dropout else "--arch lstm"} has not'
    if c.noise in ('masking', 'salt_pepper') and c.noise_level > 1:
        return f'--noise_level {c.noise_level}: --noise {c.noise} takes a share of the pixels, in (0, 1]'
    if c.btl_size >= INPUT_SIZE and not (c.noise or c.l1 or c.sparsity):
        return (f'--btl_size {c.btl_size} >= {INPUT_SIZE} pixels is an overcomplete code, which can learn the '
                f'identity map and nothing else; add a regularizer: --noise, --l1 or --sparsity')
    return None


def build_optimizer(model, config):
    optimizer_class = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}[config['optimizer']]
    # fused: one kernel for the whole update instead of several per tensor (12% of a VAE step on the CPU)
    optimizer = optimizer_class(model.parameters(), lr=config['lr'], weight_decay=config['weight_decay'], fused=True)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config['n_epochs'])
                 if config['scheduler'] == 'cosine' else None)
    return optimizer, scheduler


def check_resume_flags(argv, parser):
    """With --resume the run goes on with the flags saved in the checkpoint; a flag that
    would change the model, the data or the optimisation is refused."""
    given = {action.dest for action in parser._actions
             for arg in argv if arg.split('=')[0] in action.option_strings}
    refused = sorted(given - RESUMABLE_FLAGS)
    if refused:
        raise CliError(f'--resume continues with the flags saved in the checkpoint; --{refused[0]} would change '
                       f'the run (allowed with --resume: {resumable_flags()})')
    return given


def resume_config(config, argv, parser):
    checkpoint = load_checkpoint(config['model_fn'])
    given = check_resume_flags(argv, parser)
    saved = checkpoint['config']
    if 'last' not in checkpoint:
        raise CliError(f'{config["model_fn"]}: holds no state to resume from')
    # A flag newer than the checkpoint takes its default.
    resumed = {**config, **saved, **{k: config[k] for k in given}}
    if resumed['scheduler'] != 'none' and resumed['n_epochs'] != saved['n_epochs']:
        raise CliError(f'--n_epochs: --scheduler {saved["scheduler"]} was planned over {saved["n_epochs"]} '
                       f'epochs and cannot be stretched on --resume')
    if len(checkpoint['history']) >= resumed['n_epochs']:
        raise CliError(f'{config["model_fn"]} already holds {len(checkpoint["history"])} epochs; '
                       f'give a larger --n_epochs to train on')
    return resumed, checkpoint


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = define_argparser()
    config = vars(parse_args(parser, argv))
    checkpoint = None
    if config['resume']:
        config, checkpoint = resume_config(config, argv, parser)
    device = get_device(config['gpu_id'])
    check_writable(config['model_fn'])
    set_seed(config['seed'])

    images, labels = load_dataset(config['dataset'], config['data_dir'], train=True)
    images, labels = select_labels(images, labels, config['target_labels'])
    train_indices, valid_indices = split_train_valid(len(images), config['train_ratio'], config['seed'])
    if config['verbose']:
        print(f'{config["dataset"]}: {len(train_indices)} train / {len(valid_indices)} valid images')

    model = (model_from_checkpoint(checkpoint, config['model_fn']) if checkpoint else build_model(config)).to(device)
    optimizer, scheduler = build_optimizer(model, config)
    if config['verbose']:
        print(model)
        print(optimizer)
        print(f'parameters: {sum(p.numel() for p in model.parameters()):,}')
        if config['compile']:
            print('--compile: the first epoch compiles the loss (up to a minute); the epochs after it run faster')

    trainer = Trainer(model, optimizer, scheduler, verbose=config['verbose'], amp=config['amp'],
                      compile=config['compile'])
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CliError(f'{config["model_fn"]}: cannot resume from it ({first_line(e)})')
        if config['verbose']:
            print(f'resuming after epoch {len(trainer.history)}')

    try:
        with stop_on_signals(trainer) as save_in_progress:
            def save(trainer):
                with save_in_progress():
                    save_checkpoint(config['model_fn'], {**trainer.state_dict(), 'config': config})

            finished = trainer.train(images.to(device), train_indices.to(device), valid_indices.to(device),
                                     config['n_epochs'], config['batch_size'], on_epoch_end=save)
    except NonFiniteLoss as e:
        print(f'train.py: stopped: {e}; {saved_so_far(trainer, config)}', file=sys.stderr)
        sys.exit(1)
    except RuntimeError as e:
        # torch._dynamo is tested for only with --compile, which has imported it (1.5 s otherwise).
        if not (config['compile'] and isinstance(e, torch._dynamo.exc.TorchDynamoException)):
            raise
        print(f'train.py: stopped: --compile: torch.compile failed ({first_line(e)}); train without --compile; '
              f'{saved_so_far(trainer, config)}', file=sys.stderr)
        sys.exit(1)
    if not finished:
        print(f'train.py: {signal.Signals(trainer.stop_requested).name} in epoch {len(trainer.history) + 1}: '
              f'{saved_so_far(trainer, config)}; resume with: python train.py --model_fn {config["model_fn"]} '
              f'--resume', file=sys.stderr)
        sys.exit(128 + trainer.stop_requested)
    if config['verbose']:
        print(f'saved {config["model_fn"]} ({saved_so_far(trainer, config)})')


def saved_so_far(trainer, config):
    """What the checkpoint file holds now, in words."""
    if not trainer.history:
        return f'no epoch finished, {config["model_fn"]} was left as it was'
    best = min(trainer.history, key=lambda h: h['valid_loss'])
    epochs = 'epoch 1' if len(trainer.history) == 1 else f'epochs 1-{len(trainer.history)}'
    return f'{config["model_fn"]} holds {epochs}, best epoch {best["epoch"]} with valid loss {best["valid_loss"]:.4f}'


if __name__ == '__main__':
    run_cli(main, 'train.py')
