"""Anomaly detection by the one-class protocol: for each class, train on that class alone, score
every test image, and report the ROC AUC of "the other classes are anomalies", beside baselines
measured on the same splits and the published numbers.

    python oneclass.py --dataset fashion_mnist              # all ten classes, the recipe below
    python oneclass.py --dataset mnist --classes 0 1 --model vae --n_epochs 5

Every flag that oneclass.py does not know goes to train.py and replaces the recipe's (--n_epochs
replaces its --min_steps too). Each class's checkpoint is kept in --out_dir: the same command again reuses the
finished ones and resumes an interrupted one.
"""
import argparse
import json
import os
import sys

import torch

import analysis
import figures
from anomaly import BASELINES, SCORES, Scorer
from checkpoint import load_checkpoint
from config import DEFAULTS, ONECLASS_RECIPE
from data_loader import DATASETS, class_indices, class_names, load_dataset, split_train_valid
from model import load_model
from utils import (ArgumentParser, CliError, add_gpu_flag, add_threads_flag, flag_values, get_device, int_at_least,
                   make_out_dir, progress_bar, run_cli, run_sibling, set_seed, set_threads, threads_flag)

# train.py's flags for every class, before the user's own: the recipe of docs/results.md, "One-class
# anomaly detection".
RECIPE = ONECLASS_RECIPE
# Fashion-MNIST, mean AUROC over the ten one-vs-rest splits, % (Golan & El-Yaniv 2018, Table 1,
# unless another paper is named).
PUBLISHED = {
    'fashion_mnist': [
        ('DSEBM', 86.6),
        ('ADGAN', 88.4),
        ('Deep SAD, no labelled anomalies (Ruff et al. 2020)', 89.2),
        ('convolutional AE + one-class SVM', 91.7),
        ('one-class SVM on raw pixels', 92.8),
        ('GEOM, geometric transformations', 93.5),
        ('ARNet (Ye et al. 2022)', 93.9),
    ],
}
# Arguments of train.py that oneclass.py sets itself for each class.
OWN_TRAIN_FLAGS = ('--model_fn', '--target_labels', '--resume', '--overwrite', '--verbose')


def define_argparser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                       epilog='Any other flag is passed to train.py (e.g. --btl_size 32 --n_epochs 40 --arch conv).')
    p.add_argument('--dataset', choices=list(DATASETS), default='fashion_mnist', help='(default: %(default)s)')
    p.add_argument('--data_dir', default='./data',
                   help='the IDX files, or for --dataset folder the class folders of images (default: %(default)s)')
    p.add_argument('--classes', nargs='+', default=None,
                   help='the normal classes to run, by index or name, one model each (default: every class of the '
                        'data set)')
    p.add_argument('--image_size', type=int_at_least(1), nargs=2, metavar=('H', 'W'),
                   help='resize every image to H x W, as train.py does')
    p.add_argument('--channels', type=int, choices=[1, 3], help='convert every image to gray (1) or colour (3)')
    p.add_argument('--model', choices=['ae', 'vae'], default='ae', help='(default: %(default)s)')
    p.add_argument('--scores', nargs='+', choices=list(SCORES), default=None,
                   help='anomaly scores to measure (default: all that the model gives: '
                        + '; '.join(f'{name}: {score.description}' for name, score in SCORES.items()) + ')')
    p.add_argument('--iw_samples', type=int_at_least(1), default=100,
                   help='VAE: samples per image for neg_elbo and iwae (default: %(default)s)')
    p.add_argument('--out_dir', default='oneclass',
                   help='where the checkpoints, oneclass.json and oneclass.png go (default: %(default)s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the oneclass.json and oneclass.png in --out_dir, and retrain a class whose checkpoint '
                        'there was trained with other flags (one trained with the same flags is reused: it would '
                        'train the same)')
    add_gpu_flag(p)
    add_threads_flag(p)
    return p


def chosen_scores(args):
    if args.scores is None:
        return [name for name, score in SCORES.items() if args.model == 'vae' or not score.needs_vae]
    refused = [name for name in args.scores if SCORES[name].needs_vae and args.model != 'vae']
    if refused:
        raise CliError(f'--scores {refused[0]}: needs a VAE (--model vae); a plain AutoEncoder has no ELBO')
    return args.scores


def check_classes(classes, labels, names, train_ratio=DEFAULTS['train_ratio']):
    """Every class has enough training images for a train and a valid split."""
    for c in classes:
        n = int((labels == c).sum())
        if int(n * train_ratio) < 2 or n - int(n * train_ratio) < 1:
            raise CliError(f'--classes {names[c]}: only {n} training image(s), too few to train on and validate')


# A flag passed through to train.py replaces the recipe's, and these recipe flags with it.
REPLACES = {'--n_epochs': ['--min_steps']}


def recipe_flags(train_flags):
    """The recipe's flags with those passed through to train.py, each flag once: a flag passed
    through replaces the recipe's (and those of REPLACES with it)."""
    flags = flag_values(RECIPE.split())
    for flag, values in flag_values(train_flags).items():
        for replaced in REPLACES.get(flag, []) + [flag]:
            flags.pop(replaced, None)
        flags[flag] = values
    return [arg for flag, values in flags.items() for arg in (flag, *values)]


def model_flags(args, name, train_flags):
    """train.py's flags that define the model of the class of this name: the ones a reused
    checkpoint must share."""
    shape = [*(['--image_size', *map(str, args.image_size)] if args.image_size else []),
             *(['--channels', str(args.channels)] if args.channels else [])]
    return ['--target_labels', name, '--dataset', args.dataset, '--model', args.model, *shape,
            *recipe_flags(train_flags)]


def saved_flags(flags_fn):
    if not os.path.isfile(flags_fn):
        return None
    with open(flags_fn) as f:
        return json.load(f)


def run_train(model_fn, *flags):
    run_sibling('train.py', ['--model_fn', model_fn, '--verbose', '0', *flags], os.path.basename(model_fn))


def train_class(args, c, name, train_flags):
    """Trains the model of class c (of this name), or reuses or resumes the one in --out_dir that
    was trained with the same flags. Returns its checkpoint's path."""
    model_fn = os.path.join(args.out_dir, f'class_{c}.pth')
    flags_fn = os.path.join(args.out_dir, f'class_{c}.flags.json')
    flags = model_flags(args, name, train_flags)
    # may change between runs
    where = ['--gpu_id', str(args.gpu_id), '--data_dir', args.data_dir, *threads_flag(args)]
    if os.path.exists(model_fn):
        if saved_flags(flags_fn) == flags:
            checkpoint = load_checkpoint(model_fn)
            if len(checkpoint['history']) < checkpoint['config']['n_epochs']:
                run_train(model_fn, '--resume', *where)  # an interrupted run: go on where it stopped
            return model_fn
        if not args.overwrite:
            raise CliError(f'{model_fn} was trained with other flags; give --overwrite to retrain or another '
                           f'--out_dir')
    with open(flags_fn, 'w') as f:
        json.dump(flags, f)
    run_train(model_fn, *flags, *where, '--overwrite')
    return model_fn


@torch.no_grad()
def class_aurocs(model_fn, normal, train_images, test, names, iw_samples, device):
    """ROC AUC of each score and baseline for one class's model: the test images of other
    classes are the anomalies. train_images are all the training images of the class; the
    model's own train split is taken from them as train.py took it."""
    model, checkpoint = load_model(model_fn, device)
    config = checkpoint['config']
    train_idx, _ = split_train_valid(len(train_images), config['train_ratio'], config['seed'])
    test_images, test_labels = (t.to(device) for t in test)
    scorer = Scorer(model, lambda: train_images[train_idx].to(device), test_images, iw_samples)
    return {name: analysis.roc_auc(scorer.score(name), test_labels != normal) for name in [*names, *BASELINES]}


def results_table(per_class, class_names):
    names = list(next(iter(per_class.values())))
    widths = {name: max(12, len(name) + 2) for name in names}
    lines = [f'{"ROC AUC, %":<24}' + ''.join(f'{name:>{widths[name]}}' for name in names)]
    for c, aurocs in per_class.items():
        lines.append(f'{f"{c} {class_names[c]}":<24}' + ''.join(f'{100 * aurocs[n]:>{widths[n]}.1f}' for n in names))
    means = mean_aurocs(per_class)
    lines.append(f'{"mean":<24}' + ''.join(f'{100 * means[n]:>{widths[n]}.1f}' for n in names))
    return '\n'.join(lines)


def mean_aurocs(per_class):
    names = list(next(iter(per_class.values())))
    return {name: sum(a[name] for a in per_class.values()) / len(per_class) for name in names}


def main(argv=None):
    args, train_flags = define_argparser().parse_known_args(argv)
    set_threads(args.threads)
    for flag in train_flags:
        if flag.split('=')[0] in OWN_TRAIN_FLAGS:
            raise CliError(f'{flag.split("=")[0]}: oneclass.py sets it for each class itself')
    scores = chosen_scores(args)
    device = get_device(args.gpu_id)
    shape = dict(image_size=args.image_size, channels=args.channels)
    images, labels = load_dataset(args.dataset, args.data_dir, True, **shape)
    test = load_dataset(args.dataset, args.data_dir, False, **shape)
    names = class_names(args.dataset, args.data_dir)
    classes = class_indices(args.classes or range(len(names or [])), names, '--classes')
    check_classes(classes, labels, names)
    json_path = os.path.join(args.out_dir, 'oneclass.json')
    if os.path.exists(json_path) and not args.overwrite:
        raise CliError(f'{json_path} exists; give --overwrite to replace it (the checkpoints trained with the same '
                       f'flags are reused) or another --out_dir')
    make_out_dir(args.out_dir)
    set_seed(0)  # the IWAE draws

    per_class = {}
    bar = progress_bar(classes, desc='classes', unit='class')
    for c in bar:
        bar.set_postfix_str(f'training {names[c]}')
        model_fn = train_class(args, c, names[c], train_flags)
        bar.set_postfix_str(f'scoring {names[c]}')
        per_class[c] = class_aurocs(model_fn, c, images[labels == c], test, scores, args.iw_samples, device)
        if bar.disable:  # no bar off a terminal: a line per class instead, for a log
            print(f'class {c} {names[c]}: ROC AUC, % ' +
                  ', '.join(f'{name} {100 * auroc:.1f}' for name, auroc in per_class[c].items()), flush=True)
    bar.close()

    print(results_table(per_class, names))
    means = mean_aurocs(per_class)
    published = PUBLISHED.get(args.dataset, []) if len(classes) == len(labels.unique()) else []
    summary = {'dataset': args.dataset, 'train_flags': recipe_flags(train_flags), 'model': args.model,
               'scores': {name: SCORES[name].description for name in scores},
               'baselines': {name: score.description for name, score in BASELINES.items()},
               'per_class': {str(c): aurocs for c, aurocs in per_class.items()}, 'mean': means,
               'published_mean_percent': dict(published)}
    with open(json_path, 'w') as f:
        json.dump(summary, f, indent=2)
    fig = figures.auroc_by_class(per_class, names, list(BASELINES), published,
                                 f'{args.dataset}, one class normal, the others anomalies')
    figure_path = figures.save(fig, os.path.join(args.out_dir, 'oneclass.png'))
    for path in (json_path, figure_path):
        print(f'wrote {path}')


if __name__ == '__main__':
    try:
        run_cli(main, 'oneclass.py')
    except KeyboardInterrupt:
        print('\noneclass.py: interrupted; the same command again goes on where it stopped '
              '(finished classes are kept)', file=sys.stderr)
        sys.exit(130)
