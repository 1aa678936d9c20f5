"""Loads a checkpoint made by train.py, evaluates it on the test set and draws figures.

    python predict.py --model_fn ae.pth
"""
import os

import matplotlib
matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt
import torch

from data_loader import DATASETS, load_dataset, select_labels, to_input
from model import model_from_checkpoint
from trainer import format_losses, run_epoch
from utils import ArgumentParser, CliError, check_writable, default_gpu_id, get_device, int_at_least, load_checkpoint, run_cli


def define_argparser(argv=None):
    p = ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model_fn', required=True, help='checkpoint written by train.py')
    p.add_argument('--gpu_id', type=int, default=default_gpu_id(),
                   help='CUDA device index, -1 for the CPU (default: 0 when CUDA is available, else -1)')
    p.add_argument('--out_dir', default=None,
                   help='folder for the figures (default: MODEL_predict beside the checkpoint)')
    p.add_argument('--dataset', choices=list(DATASETS), default=None,
                   help='evaluate on this data set instead of the one the model was trained on')
    p.add_argument('--data_dir', default=None, help='read the data from here instead of the saved --data_dir')
    p.add_argument('--batch_size', type=int_at_least(1), default=1024, help='(default: %(default)s)')
    p.add_argument('--n_images', type=int_at_least(1), default=10,
                   help='test images in the reconstruction figure (default: %(default)s)')
    return p.parse_args(argv)


def save_image_rows(rows, path, title):
    """One row of 28 x 28 images per (label, images) pair, the label on the left."""
    n_cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols, len(rows) + .5), squeeze=False,
                             gridspec_kw=dict(wspace=.05, hspace=.05))
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c].reshape(28, 28).clamp(0, 1).cpu().numpy(), cmap='gray', vmin=0, vmax=1)
            else:
                ax.axis('off')
        axes[r, 0].set_ylabel(label, rotation=0, ha='right', va='center')
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)
    return path


def save_image_grid(images, path, title, n_cols=8):
    rows = [('', images[i:i + n_cols]) for i in range(0, len(images), n_cols)]
    return save_image_rows(rows, path, title)


def main(argv=None):
    args = define_argparser(argv)
    device = get_device(args.gpu_id)
    checkpoint = load_checkpoint(args.model_fn)
    config = checkpoint['config']
    model = model_from_checkpoint(checkpoint, args.model_fn).to(device).eval()
    dataset = args.dataset or config['dataset']
    data_dir = args.data_dir or config['data_dir']
    out_dir = args.out_dir or os.path.splitext(args.model_fn)[0] + '_predict'
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise CliError(f'--out_dir {out_dir}: cannot create it ({e.strerror})')
    check_writable(os.path.join(out_dir, 'reconstructions.png'))

    images, labels = load_dataset(dataset, data_dir, train=False)
    images, labels = select_labels(images, labels, config['target_labels'])
    images = images.to(device)
    classes = 'all classes' if not config['target_labels'] else 'classes ' + ' '.join(map(str, config['target_labels']))
    print(f'{dataset} test set: {len(images)} images ({classes})')
    test = run_epoch(model, images, args.batch_size)
    print(f'test: {format_losses(test)}')

    written = []
    with torch.no_grad():
        x = to_input(images[:args.n_images])
        written.append(save_image_rows([('original', x), ('reconstruction', model(x))],
                                       os.path.join(out_dir, 'reconstructions.png'),
                                       f'{dataset} test images and their reconstructions'))
        if model.has_prior:
            written.append(save_image_grid(model.sample(64), os.path.join(out_dir, 'samples.png'),
                                           'decoded from z ~ N(0, I)'))
    for path in written:
        print(f'wrote {path}')


if __name__ == '__main__':
    run_cli(main, 'predict.py')
