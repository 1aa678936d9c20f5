"""Trains and evaluates the recipes of docs/results.md on Fashion-MNIST and checks their targets.

    python recipes.py                     # every recipe, all epochs (hours on 2 CPU cores)
    python recipes.py --recipes ae2 ae30  # some of them
    python recipes.py --recipe_epochs 1   # the same pipeline in a few minutes, to try it

Each recipe is a train.py command and a predict.py run; the targets compare the results with
PCA, with the classic VAE, with published likelihoods and with a training time. Checkpoints,
figures and recipes.json go to --recipes_dir; run again, it goes on with each recipe where its
checkpoint stopped (a recipe longer than a sitting resumes), and evaluates it afresh.
"""
import json
import os

from checkpoint import load_checkpoint
from config import DEFAULTS, RECIPES, RunOptions, make_config
from flags import as_flags
from pipeline import train_or_reuse
from utils import (ArgumentParser, add_device_flags, get_device, int_at_least, make_out_dir, print_rows,
                   progress_bar, run_cli, run_sibling, threads_flag)

# Train-time targets, in minutes on 2 CPU cores; the papers' schedule trains for as long as it takes.
RECIPE_MINUTES = {**{name: 15 for name in ('ae2', 'ae30', 'vae20', 'classic_vae20', 'anomaly')},
                  **{name: 60 for name in RECIPES if name.endswith('_fast')}}
# With --recipe_epochs, a check of the pipeline: -log p(x) from at most this many samples per image.
SHORT_IW_SAMPLES = 10
# Published test -log p(x) on binarized Fashion-MNIST, 5,000 importance samples, in nats (Norouzi
# et al. 2020, "Exemplar VAEs for exemplar based generation and data augmentation", Table 1).
PUBLISHED_NLL = {'binarized_vae': ('VAE, N(0, I) prior', 228.70), 'binarized_vamp': ('VAE, VampPrior', 227.35),
                 'binarized_vae_fast': ('VAE, N(0, I) prior', 228.70),
                 'binarized_vamp_fast': ('VAE, VampPrior', 227.35)}
EXEMPLAR_VAE_NLL = 226.75


def define_argparser():
    p = ArgumentParser(prog='recipes.py', description=__doc__.strip().splitlines()[0])
    p.add_argument('--recipes_dir', default='recipes',
                   help='where the checkpoints, figures and recipes.json go (default: %(default)s)')
    p.add_argument('--recipes', nargs='+', choices=list(RECIPES), default=list(RECIPES), metavar='NAME',
                   help=f'run these recipes only, of {", ".join(RECIPES)} (default: all)')
    p.add_argument('--recipe_epochs', type=int_at_least(1), default=None,
                   help=f'train every recipe for this many epochs instead, and estimate -log p(x) from at most '
                        f'{SHORT_IW_SAMPLES} samples per image, for a quick check of the pipeline')
    p.add_argument('--overwrite', action='store_true',
                   help='train every recipe from the start, replacing its checkpoint in --recipes_dir (without it, '
                        'a recipe whose checkpoint is there is reused when finished and goes on from where it '
                        'stopped otherwise, and one trained with other flags stops the run)')
    add_device_flags(p)
    p.add_argument('--amp', action='store_true', help='train every recipe with --amp (bf16 autocast)')
    p.add_argument('--compile', action='store_true', help='train every recipe with --compile')
    p.add_argument('--data_dir', default=DEFAULTS['data_dir'],
                   help='passed to train.py and predict.py (default: %(default)s)')
    return p


def recipe_changes(args, name):
    """A recipe's flags beyond the defaults, with --recipe_epochs, --amp and --compile last."""
    run = {**({'n_epochs': args.recipe_epochs} if args.recipe_epochs else {}),
           **({'amp': True} if args.amp else {}), **({'compile': True} if args.compile else {})}
    return {**{flag: value for flag, value in RECIPES[name].changes.items() if flag not in run}, **run}


def recipe_run(args, name, changes):
    """The RunConfig of a recipe's changes on Fashion-MNIST, its RunOptions and the names of the flags set."""
    data = {'dataset': 'fashion_mnist', 'data_dir': args.data_dir}
    options = RunOptions(os.path.join(args.recipes_dir, name + '.pth'), gpu_id=args.gpu_id, threads=args.threads,
                         verbose=0, overwrite=args.overwrite)
    return make_config(**changes, **data), options, set(changes) | set(data)


def train_recipe(name, config, options, given, device):
    """Trains a recipe, or goes on with its checkpoint in --recipes_dir where an earlier run stopped,
    saying how far it is (pipeline.train_or_reuse). Returns the training's wall time: the epochs'
    seconds that the checkpoint records."""
    def say_how_far(done):
        print(f'{name}: {len(done["history"])} of {done["config"].training.n_epochs} epochs trained in '
              f'{options.model_fn}; going on from there', flush=True)

    if train_or_reuse(config, options, given, device, on_resume=say_how_far) == 'reused':
        print(f'{name}: {options.model_fn} holds the finished run of these flags; evaluated as it is '
              f'(--overwrite trains it again)', flush=True)
    return sum(epoch['seconds'] for epoch in load_checkpoint(options.model_fn)['history'])


def run_recipes(args):
    """Trains each recipe (or resumes it), evaluates it with predict.py, and returns the metrics and times."""
    device = get_device(args.gpu_id)
    make_out_dir(args.recipes_dir, '--recipes_dir')
    results = {}
    for name in progress_bar(args.recipes, desc='recipes', unit='recipe'):
        changes = recipe_changes(args, name)
        config, options, given = recipe_run(args, name, changes)
        seconds = train_recipe(name, config, options, given, device)
        out_dir = os.path.join(args.recipes_dir, name)
        iw_samples = RECIPES[name].iw_samples
        if iw_samples and args.recipe_epochs:
            iw_samples = min(iw_samples, SHORT_IW_SAMPLES)
        samples = ['--iw_samples', str(iw_samples)] if iw_samples else []
        # The figures and metrics of the checkpoint as it is now replace those of an earlier run; predict.py
        # runs in a process of its own, whose figures (matplotlib) and memory end with it.
        run_sibling('predict.py', ['--model_fn', options.model_fn, '--data_dir', args.data_dir, '--gpu_id',
                                   str(args.gpu_id), *threads_flag(args), '--out_dir', out_dir, '--overwrite',
                                   '--what', *RECIPES[name].what, *samples], f'predict.py on {name} failed')
        with open(os.path.join(out_dir, 'metrics.json')) as f:
            results[name] = {'train_flags': ' '.join(as_flags(changes)), 'train_seconds': seconds,
                             **json.load(f)}
    return results


def recipe_rows(r):
    """(what, reached, target and whether it holds) for each target of docs/results.md whose
    recipes are in the results r."""
    def verdict(ok):
        return 'met' if ok else 'NOT MET'

    rows = []
    for name, size in (('ae2', 2), ('ae30', 30)):
        if name in r:
            ratio = r[name]['sse_per_image'] / r[name]['pca_sse_per_image']
            rows.append((f'AE {size}-d: squared error per image vs PCA-{size}',
                         f'{r[name]["sse_per_image"]:.2f} vs {r[name]["pca_sse_per_image"]:.2f}',
                         f'{ratio:.2f}x, target <= 0.55x: {verdict(ratio <= .55)}'))
    if 'ae2' in r:
        knn = r['ae2']['knn_accuracy']
        rows.append(('AE 2-d: 5-NN accuracy of the codes', f'{knn:.3f}', f'target >= 0.75: {verdict(knn >= .75)}'))
    if 'vae20' in r and 'classic_vae20' in r:
        ours, classic = r['vae20'], r['classic_vae20']
        below = 1 - ours['neg_elbo'] / classic['neg_elbo']
        rows += [('VAE 20-d: negative ELBO vs classic 784-400-20',
                  f'{ours["neg_elbo"]:.2f} vs {classic["neg_elbo"]:.2f}',
                  f'{below:.2%} below, target >= 2%: {verdict(below >= .02)}'),
                 ('VAE 20-d: IWAE bound, a cross-entropy of grayscale pixels',
                  f'{ours["iwae_cross_entropy"]:.2f} vs {classic["iwae_cross_entropy"]:.2f}', '')]
    if 'anomaly' in r:
        rows.append(('anomaly (trained on 0 1 3 8): ROC AUC', f'{r["anomaly"]["anomaly_roc_auc"]:.3f}', ''))
    for name in (n for n in RECIPES if n.startswith('binarized_') and n in r):
        nll, samples = r[name]['iwae_nll'], r[name]['iwae_samples']
        label, published = PUBLISHED_NLL.get(name, ('Exemplar VAE', EXEMPLAR_VAE_NLL))
        rows.append((f'{name}: test -log p(x), {samples} samples, vs {label}',
                     f'{nll:.2f} +- {r[name]["iwae_nll_std_error"]:.2f} vs {published:.2f}',
                     f'target <= {published:.2f}: {verdict(nll <= published)}'))
    for name, result in r.items():
        minutes = result['train_seconds'] / 60
        target = RECIPE_MINUTES.get(name)
        rows.append((f'train time of {name}', f'{minutes:.1f} min',
                     f'target <= {target} min: {verdict(minutes <= target)}' if target else ''))
    return rows


def main(argv=None):
    args = define_argparser().parse_args(argv)
    results = run_recipes(args)
    print_rows(recipe_rows(results))
    if args.recipe_epochs:
        print(f'(every recipe trained for --recipe_epochs {args.recipe_epochs} only: a check of the pipeline, '
              f'not of the targets)')
    path = os.path.join(args.recipes_dir, 'recipes.json')
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'wrote {path}')


if __name__ == '__main__':
    run_cli(main, 'recipes.py')
