"""Trains an AutoEncoder or a VAE on MNIST-style images and saves it as a .pth checkpoint.

    python train.py --model_fn ae.pth --btl_size 2
"""
import sys

import torch

from data_loader import DATASETS, load_dataset, select_labels, split_train_valid
from model import build_model
from trainer import Trainer
from utils import (ArgumentParser, CliError, check_writable, default_gpu_id, float_in, get_device, int_at_least,
                   run_cli, save_checkpoint, set_seed)


def define_argparser(argv=None):
    p = ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model_fn', required=True, help='where to save the checkpoint, e.g. ae.pth')
    p.add_argument('--gpu_id', type=int, default=default_gpu_id(),
                   help='CUDA device index, -1 for the CPU (default: 0 when CUDA is available, else -1)')

    g = p.add_argument_group('model')
    g.add_argument('--model', choices=['ae', 'vae'], default='ae',
                   help='ae: deterministic AutoEncoder; vae: variational autoencoder (default: %(default)s)')
    g.add_argument('--n_layers', type=int_at_least(1), default=5,
                   help='number of hidden layers on each side; their sizes fall in equal steps from 784 '
                        'toward --btl_size, e.g. 784-654-523-393-263-132-2 for 5 layers and --btl_size 2 '
                        '(default: %(default)s)')
    g.add_argument('--hidden_sizes', type=int_at_least(1), nargs='+', default=None,
                   help='explicit hidden sizes of the encoder, e.g. 512 256 128, mirrored in the decoder; '
                        'overrides --n_layers')
    g.add_argument('--btl_size', type=int_at_least(1), default=10, help='size of the code (default: %(default)s)')
    g.add_argument('--use_dropout', action='store_true',
                   help='Dropout after each ReLU instead of BatchNorm1d')
    g.add_argument('--dropout_p', type=float_in(0, 1, low_open=False), default=.3,
                   help='dropout probability in [0, 1), with --use_dropout (default: %(default)s)')
    g.add_argument('--loss', choices=['mse', 'bce'], default=None,
                   help='AutoEncoder reconstruction loss, summed over pixels (default: mse); '
                        'the VAE always uses Bernoulli BCE')
    g.add_argument('--kl_weight', type=float_in(0, float('inf'), low_open=False), default=1.,
                   help='VAE weight of the KL term, beta in a beta-VAE (default: %(default)s)')

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

    config = p.parse_args(argv)
    if config.model == 'vae' and config.loss is not None:
        p.error('--loss applies to --model ae only; the VAE\'s reconstruction term is always BCE')
    if config.model == 'ae' and config.loss is None:
        config.loss = 'mse'
    return config


def build_optimizer(model, config):
    optimizer_class = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}[config['optimizer']]
    optimizer = optimizer_class(model.parameters(), lr=config['lr'], weight_decay=config['weight_decay'])
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config['n_epochs'])
                 if config['scheduler'] == 'cosine' else None)
    return optimizer, scheduler


def main(argv=None):
    config = vars(define_argparser(argv))
    device = get_device(config['gpu_id'])
    check_writable(config['model_fn'])
    set_seed(config['seed'])

    images, labels = load_dataset(config['dataset'], config['data_dir'], train=True)
    images, labels = select_labels(images, labels, config['target_labels'])
    (train_images, _), (valid_images, _) = split_train_valid(images, labels, config['train_ratio'], config['seed'])
    if config['verbose']:
        print(f'{config["dataset"]}: {len(train_images)} train / {len(valid_images)} valid images')

    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(model, config)
    if config['verbose']:
        print(model)
        print(optimizer)
        print(f'parameters: {sum(p.numel() for p in model.parameters()):,}')

    trainer = Trainer(model, optimizer, scheduler, verbose=config['verbose'])
    history = trainer.train(train_images.to(device), valid_images.to(device), config['n_epochs'],
                            config['batch_size'])
    if not history:
        print('interrupted before the first epoch ended; nothing saved', file=sys.stderr)
        sys.exit(130)

    save_checkpoint(config['model_fn'], {
        'model': model.state_dict(),
        'opt': optimizer.state_dict(),
        'config': config,
        'history': history,
    })
    best = min(history, key=lambda h: h['valid_loss'])
    if trainer.interrupted:
        print(f'interrupted after epoch {len(history)}; saved the best model so far (epoch {best["epoch"]}, '
              f'valid loss {best["valid_loss"]:.4f}) to {config["model_fn"]}', file=sys.stderr)
        sys.exit(130)
    if config['verbose']:
        print(f'saved {config["model_fn"]} (best epoch {best["epoch"]}, valid loss {best["valid_loss"]:.4f})')


if __name__ == '__main__':
    run_cli(main, 'train.py')
