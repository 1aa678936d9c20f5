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
from anomaly import BASELINES, SCORES, compute_score
from checkpoint import load_model
from config import DEFAULTS, ONECLASS_RECIPE
from data_loader import DATASETS, class_indices, class_names, eval_images, run_images
import flags
from flags import as_flags
from pipeline import train_or_reuse
from utils import (ArgumentParser, CliError, add_device_flags, get_device, int_at_least, make_out_dir,
                   progress_bar, run_cli, set_seed, set_threads)

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
# Flags of train.py that oneclass.py sets itself for each class.
OWN_TRAIN_FLAGS = ('--model_fn', '--target_labels', '--resume', '--overwrite', '--verbose')


def define_argparser():
    p = ArgumentParser(prog='oneclass.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False,
                       epilog='Any other flag is passed to train.py (e.g. --btl_size 32 --n_epochs 40 --arch conv).')
    p.add_argument('--dataset', choices=list(DATASETS), default='fashion_mnist', help='(default: %(default)s)')
    p.add_argument('--data_dir', default=DEFAULTS['data_dir'],
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
    p.add_argument('--iw_samples', type=int_at_least(1), default=analysis.IW_SAMPLES,
                   help='VAE: samples per image for neg_elbo and iwae (default: %(default)s)')
    p.add_argument('--out_dir', default='oneclass',
                   help='where the checkpoints, oneclass.json and oneclass.png go (default: %(default)s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the oneclass.json and oneclass.png in --out_dir, and retrain a class whose checkpoint '
                        'there was trained with other flags (one trained with the same flags is reused: it would '
                        'train the same)')
    add_device_flags(p)
    return p


def chosen_scores(args):
    if args.scores is None:
        return [name for name, score in SCORES.items() if args.model == 'vae' or not score.needs_vae]
    refused = [name for name in args.scores if SCORES[name].needs_vae and args.model != 'vae']
    if refused:
        raise CliError(f'--scores {refused[0]}: needs a VAE (--model vae); a plain AutoEncoder has no ELBO')
    return args.scores


def check_classes(classes, labels, names, train_ratio):
    """Every class has enough training images for a train and a valid split."""
    for c in classes:
        n = int((labels == c).sum())
        if int(n * train_ratio) < 2 or n - int(n * train_ratio) < 1:
            raise CliError(f'--classes {names[c]}: only {n} training image(s), too few to train on and validate')


# A flag passed through to train.py replaces the recipe's, and these recipe flags with it.
REPLACES = {'n_epochs': ['min_steps']}


def class_config(args, c, train_flags):
    """The RunConfig of the model of class c, the RunOptions of its run and the names of the flags set:
    the recipe's, with the flags passed through to train.py replacing its own (and those of REPLACES
    with them), oneclass.py's own and the class."""
    passed = {arg[2:].split('=')[0] for arg in train_flags if arg.startswith('--')}
    replaced = passed | {name for flag in passed for name in REPLACES.get(flag, [])}
    base = {**{name: value for name, value in RECIPE.changes.items() if name not in replaced},
            'dataset': args.dataset, 'data_dir': args.data_dir, 'model': args.model, 'target_labels': [c],
            **({'image_size': args.image_size} if args.image_size else {}),
            **({'channels': args.channels} if args.channels else {})}
    model_fn = os.path.join(args.out_dir, f'class_{c}.pth')
    config, options, given = flags.parse([*train_flags, '--model_fn', model_fn], flags.define_argparser('oneclass.py'),
                                         base)
    return config, options._replace(gpu_id=args.gpu_id, threads=args.threads, verbose=0,
                                    overwrite=args.overwrite), given


@torch.no_grad()
def class_aurocs(model_fn, normal, scores, iw_samples, device):
    """ROC AUC of each score and baseline for one class's model: the test images of other classes
    are the anomalies. The images are the model's own (data_loader.run_images): its train split of the
    class, and the test set, binarized once for a --binarize model."""
    model, checkpoint = load_model(model_fn, device)
    config = checkpoint['config']
    data = run_images(config)
    test_images, test_labels = (t.to(device) for t in run_images(config, train=False))
    evaluation = analysis.Evaluation(model, lambda: eval_images(config, data.images, data.train).to(device),
                                     test_images, iw_samples)
    return {name: analysis.roc_auc(compute_score(evaluation, name), test_labels != normal)
            for name in [*scores, *BASELINES]}


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
    names = class_names(args.dataset, args.data_dir)
    classes = class_indices(args.classes or range(len(names or [])), names, '--classes')
    configs = {c: class_config(args, c, train_flags) for c in classes}
    labels = run_images(configs[classes[0]][0].replace(target_labels=None)).labels
    check_classes(classes, labels, names, configs[classes[0]][0].training.train_ratio)
    json_path = os.path.join(args.out_dir, 'oneclass.json')
    if os.path.exists(json_path) and not args.overwrite:
        raise CliError(f'{json_path} exists; give --overwrite to replace it (the checkpoints trained with the same '
                       f'flags are reused) or another --out_dir')
    make_out_dir(args.out_dir)

    per_class = {}
    bar = progress_bar(classes, desc='classes', unit='class')
    for c in bar:
        bar.set_postfix_str(f'training {names[c]}')
        how = train_or_reuse(*configs[c], device)
        bar.set_postfix_str(f'scoring {names[c]}')
        set_seed(0)  # the IWAE draws
        model_fn = configs[c][1].model_fn
        per_class[c] = class_aurocs(model_fn, c, scores, args.iw_samples, device)
        if bar.disable:  # no bar off a terminal: a line per class instead, for a log
            print(f'class {c} {names[c]} ({how} {model_fn}): ROC AUC, % ' +
                  ', '.join(f'{name} {100 * auroc:.1f}' for name, auroc in per_class[c].items()), flush=True)
    bar.close()

    print(results_table(per_class, names))
    means = mean_aurocs(per_class)
    published = PUBLISHED.get(args.dataset, []) if len(classes) == len(names) else []
    config = configs[classes[0]][0]
    summary = {'dataset': args.dataset, 'train_flags': as_flags({name: value for name, value in config.flags().items()
                                                                if name not in ('target_labels', 'image_shape') and
                                                                value != DEFAULTS[name]}), 'model': args.model,
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
