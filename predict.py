"""Looks inside a checkpoint made by train.py: test metrics, baselines and figures.

    python predict.py --model_fn ae.pth [--what recon latent ...]
"""
import json
import os
from functools import cached_property

import matplotlib
matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from torch.distributions import Normal

import analysis
from data_loader import CLASS_NAMES, DATASETS, load_dataset, select_labels, split_train_valid, to_input
from model import model_from_checkpoint
from trainer import format_losses
from utils import (ArgumentParser, CliError, check_writable, default_gpu_id, get_device, int_at_least,
                   load_checkpoint, run_cli, set_seed)

WHAT = ['recon', 'latent', 'boundary', 'manifold', 'samples', 'interp', 'anomaly', 'metrics', 'curves']
NEEDS_2D_CODE = {'boundary', 'manifold'}
KNN_K = 5
NEAR_ZERO = .01  # a code activation this close to 0 counts as off, for sparse codes


def define_argparser():
    p = ArgumentParser(description=__doc__.strip().splitlines()[0], allow_abbrev=False)
    p.add_argument('--model_fn', required=True, help='checkpoint written by train.py')
    p.add_argument('--what', nargs='+', choices=WHAT, default=None,
                   help='what to make (default: all that apply; boundary and manifold need a 2-d code): '
                        'recon: test images and reconstructions (denoising models: noisy, denoised, clean too); '
                        'latent: test codes by class; boundary: kNN '
                        'decision regions in the code plane; manifold: images decoded from a grid over the code '
                        'plane; samples: generated images; interp: images between two codes; anomaly: per-image '
                        'scores, the most anomalous images and ROC AUC; metrics: metrics.json and a table beside '
                        'PCA; curves: loss per epoch')
    p.add_argument('--gpu_id', type=int, default=default_gpu_id(),
                   help='CUDA device index, -1 for the CPU (default: 0 when CUDA is available, else -1)')
    p.add_argument('--out_dir', default=None,
                   help='folder for the figures and metrics.json (default: MODEL_predict beside the checkpoint)')
    p.add_argument('--dataset', choices=list(DATASETS), default=None,
                   help='evaluate on this data set instead of the one the model was trained on')
    p.add_argument('--data_dir', default=None, help='read the data from here instead of the saved --data_dir')
    p.add_argument('--batch_size', type=int_at_least(1), default=1024, help='(default: %(default)s)')
    p.add_argument('--n_images', type=int_at_least(1), default=10,
                   help='test images in the reconstruction figure (default: %(default)s)')
    g = p.add_mutually_exclusive_group()
    g.add_argument('--interp', type=int, nargs=2, metavar=('A', 'B'),
                   help='interpolate between test images number A and B')
    g.add_argument('--interp_classes', type=int, nargs=2, metavar=('A', 'B'),
                   help='interpolate between the first test images of classes A and B (default: the first two '
                        'classes)')
    p.add_argument('--interp_steps', type=int_at_least(2), default=10, help='(default: %(default)s)')
    p.add_argument('--iw_samples', type=int_at_least(1), default=100,
                   help='VAE: samples per image for the importance-weighted estimate of -log p(x) '
                        '(default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='seeds samples and the IWAE estimate (default: %(default)s)')
    return p


class Report:
    """One model on its data: each --what is a method that writes its files and returns their
    paths. Codes and scores are computed once, when first needed."""

    def __init__(self, model, checkpoint, args, device, out_dir):
        self.model, self.args, self.out_dir = model, args, out_dir
        self.config, self.history = checkpoint['config'], checkpoint['history']
        config = self.config
        self.dataset = args.dataset or config['dataset']
        self.data_dir = args.data_dir or config['data_dir']
        self.class_names = CLASS_NAMES[self.dataset]
        # Every test image, for anomaly detection; the rest uses the classes trained on.
        self.all_images, self.all_labels = (t.to(device) for t in load_dataset(self.dataset, self.data_dir, train=False))
        self.known = (torch.isin(self.all_labels, torch.tensor(config['target_labels'], device=device))
                      if config['target_labels'] else torch.ones_like(self.all_labels, dtype=torch.bool))
        self.images, self.labels = self.all_images[self.known], self.all_labels[self.known]
        self.results = {'dataset': self.dataset, 'n_test': len(self.images)}  # what goes into metrics.json

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def decode(self, z):
        with torch.no_grad():
            return self.model.decode(z)

    @cached_property
    def train_set(self):
        """The images the model was trained on: the same classes and the same seeded split (of
        the data set being evaluated, when --dataset names another)."""
        images, labels = load_dataset(self.dataset, self.data_dir, train=True)
        images, labels = select_labels(images, labels, self.config['target_labels'])
        train_idx, _ = split_train_valid(len(images), self.config['train_ratio'], self.config['seed'])
        return images[train_idx].to(self.images.device), labels[train_idx].to(self.images.device)

    @cached_property
    def all_scores(self):
        """Per-image loss, its parts, sse and bce of every test image."""
        return analysis.image_scores(self.model, self.all_images, self.args.batch_size)

    def test_losses(self):
        """Mean loss and parts per image over the test images of the classes trained on."""
        return {name: self.all_scores[name][self.known].mean().item() for name in self.all_scores
                if name not in ('sse', 'bce')}

    @cached_property
    def train_codes(self):
        return analysis.encode_all(self.model, self.train_set[0], self.args.batch_size)

    @cached_property
    def test_codes(self):
        return analysis.encode_all(self.model, self.images, self.args.batch_size)

    @cached_property
    def code_range(self):
        """The box that holds the central 99% of the training and test codes, 5% wider."""
        return analysis.central_box(torch.cat([self.train_codes, self.test_codes]))

    def legend(self, ax):
        ax.legend(markerscale=3, fontsize=8, loc='center left', bbox_to_anchor=(1, .5))

    # --- one method for each --what ---

    def recon(self):
        x = to_input(self.images[:self.args.n_images])
        with torch.no_grad():
            written = [save_image_rows([('original', x), ('reconstruction', self.model(x))],
                                       self.path('reconstructions.png'),
                                       f'{self.dataset} test images and their reconstructions')]
            if self.config.get('noise'):
                noisy = self.model.corrupt(x)
                written.append(save_image_rows([('noisy', noisy), ('denoised', self.model(noisy)), ('clean', x)],
                                               self.path('denoising.png'),
                                               f'{self.config["noise"]} noise, level {self.config["noise_level"]}'))
        return written

    def latent(self):
        codes, title = self.test_codes, 'test codes'
        if codes.shape[1] > 2:
            codes = analysis.PCA(codes, 2).encode(codes)
            title = f'test codes ({self.test_codes.shape[1]}-d, projected on their first 2 principal components)'
        fig, ax = plt.subplots(figsize=(8, 6.5))
        self.scatter_by_class(ax, codes, self.labels, size=3)
        ax.set_xlabel('z1' if self.test_codes.shape[1] == 2 else 'PC 1')
        ax.set_ylabel('z2' if self.test_codes.shape[1] == 2 else 'PC 2')
        ax.set_title(title)
        self.legend(ax)
        return [save_figure(fig, self.path('latent.png'))]

    def scatter_by_class(self, ax, codes, labels, size, alpha=.6):
        codes, labels = codes.cpu(), labels.cpu()
        for c in labels.unique().tolist():
            keep = labels == c
            ax.scatter(codes[keep, 0], codes[keep, 1], s=size, alpha=alpha, color=plt.cm.tab10(c % 10),
                       label=self.class_names[c])

    def boundary(self):
        (x0, y0), (x1, y1) = (t.tolist() for t in self.code_range)
        n = 150
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, n), torch.linspace(y0, y1, n), indexing='xy')
        grid = torch.stack([gx.flatten(), gy.flatten()], 1).to(self.train_codes.device)
        # 10,000 training codes draw the same regions as all of them, several times faster.
        some = torch.randperm(len(self.train_codes), device=grid.device)[:10000]
        regions = analysis.knn_predict(self.train_codes[some], self.train_set[1][some], grid, KNN_K).view(n, n).cpu()
        fig, ax = plt.subplots(figsize=(8, 6.5))
        colors = matplotlib.colors.ListedColormap([plt.cm.tab10(c) for c in range(10)])
        ax.imshow(regions.numpy(), origin='lower', extent=(x0, x1, y0, y1), cmap=colors, vmin=-.5, vmax=9.5, alpha=.3,
                  aspect='auto', interpolation='nearest')
        self.scatter_by_class(ax, self.test_codes, self.labels, size=2)
        ax.set_xlim(x0, x1)  # the few test codes outside the shaded box are left out
        ax.set_ylim(y0, y1)
        ax.set_xlabel('z1')
        ax.set_ylabel('z2')
        ax.set_title(f'decision regions of a {KNN_K}-NN classifier on the training codes, test codes on top')
        self.legend(ax)
        return [save_figure(fig, self.path('boundary.png'))]

    def manifold(self, n=20):
        if self.model.has_prior:
            # Equal steps of probability under the N(0, 1) prior of each coordinate.
            axis = [Normal(0., 1.).icdf(torch.linspace(.03, .97, n))] * 2
            how = 'through the inverse CDF of N(0, 1)'
        else:
            low, high = self.code_range
            axis = [torch.linspace(low[i].item(), high[i].item(), n) for i in range(2)]
            how = 'over the central 99% of the codes'
        gx, gy = torch.meshgrid(axis[0], axis[1].flip(0), indexing='xy')  # z2 grows upwards
        images = self.decode(torch.stack([gx.flatten(), gy.flatten()], 1).to(self.test_codes.device))
        mosaic = images.clamp(0, 1).view(n, n, 28, 28).permute(0, 2, 1, 3).reshape(n * 28, n * 28).cpu()
        fig, ax = plt.subplots(figsize=(9, 9))
        ax.imshow(mosaic.numpy(), cmap='gray', vmin=0, vmax=1, extent=(0, n, 0, n))
        ticks = list(range(0, n, 4))
        ax.set_xticks([t + .5 for t in ticks], [f'{axis[0][t]:.2f}' for t in ticks])
        ax.set_yticks([t + .5 for t in ticks], [f'{axis[1][t]:.2f}' for t in ticks])
        ax.set_xlabel('z1')
        ax.set_ylabel('z2')
        ax.set_title(f'decoded from a {n} x {n} grid {how}')
        return [save_figure(fig, self.path('manifold.png'))]

    def samples(self):
        if self.model.has_prior:
            z, title = torch.randn(64, self.test_codes.shape[1], device=self.test_codes.device), 'decoded from z ~ N(0, I)'
        else:
            # An AutoEncoder has no prior; a Gaussian fitted to its codes lands in gaps and
            # off the code manifold, which is why an AE is a poor generator.
            z = analysis.fit_gaussian(self.train_codes).sample((64,))
            title = 'decoded from a Gaussian fitted to the training codes'
        return [save_image_grid(self.decode(z), self.path('samples.png'), title)]

    def interp(self):
        a, b = self.interp_endpoints()
        z = analysis.encode_all(self.model, self.images[[a, b]])
        t = torch.linspace(0, 1, self.args.interp_steps, device=z.device)[:, None]
        images = self.decode((1 - t) * z[0] + t * z[1])
        rows = [('test images', to_input(self.images[[a, b]])), ('decoded', images)]
        names = [self.class_names[self.labels[i]] for i in (a, b)]
        return [save_image_rows(rows, self.path('interp.png'),
                                f'test image {a} ({names[0]}) to test image {b} ({names[1]}), '
                                f'{self.args.interp_steps} steps')]

    def interp_endpoints(self):
        n = len(self.images)
        if self.args.interp:
            bad = [i for i in self.args.interp if not 0 <= i < n]
            if bad:
                raise CliError(f'--interp {bad[0]}: test images are numbered 0 to {n - 1}')
            return self.args.interp
        classes = self.args.interp_classes or self.labels.unique()[:2].tolist()
        ends = []
        for c in classes:
            found = (self.labels == c).nonzero()
            if len(found) == 0:
                raise CliError(f'--interp_classes {c}: no test image of that class')
            ends.append(int(found[0]))
        return ends

    def anomaly(self):
        scores = self.all_scores
        # AE: the reconstruction error; VAE: the negative ELBO (at z = mu), KL at weight 1.
        score = scores['recon'] + scores.get('kl', 0)
        labels = self.all_labels.cpu()
        fig, ax = plt.subplots(figsize=(9, 5))
        bins = torch.linspace(score.min().item(), torch.quantile(score, .995).item(), 60).numpy()
        for c in labels.unique().tolist():
            ax.hist(score[labels == c].cpu().numpy(), bins=bins, histtype='step', linewidth=1.5,
                    color=plt.cm.tab10(c % 10), label=self.class_names[c], density=True)
        ax.set_xlabel('anomaly score (' + ('negative ELBO, nats' if 'kl' in scores else 'reconstruction error') + ')')
        ax.set_ylabel('density')
        title = 'anomaly scores of the test images by class'
        if self.config['target_labels']:
            is_anomaly = ~torch.isin(labels, torch.tensor(self.config['target_labels']))
            auc = analysis.roc_auc(score, is_anomaly)
            self.results['anomaly_roc_auc'] = auc
            title += f'; classes not trained on as anomalies: ROC AUC {auc:.3f}'
            print(f'anomaly ROC AUC (classes {" ".join(map(str, self.config["target_labels"]))} normal): {auc:.4f}')
        ax.set_title(title)
        self.legend(ax)
        top = score.topk(16).indices
        worst = save_image_grid(to_input(self.all_images[top]), self.path('anomalies.png'),
                                'the 16 most anomalous test images: ' +
                                ', '.join(self.class_names[labels[i]] for i in top.tolist()))
        return [save_figure(fig, self.path('anomaly_hist.png')), worst]

    def metrics(self):
        m, k = self.results, self.test_codes.shape[1]
        scores = {name: value[self.known] for name, value in self.all_scores.items()}
        test_labels, train_labels = self.labels, self.train_set[1]
        knn = analysis.knn_predict(self.train_codes, train_labels, self.test_codes, KNN_K)
        pca = analysis.pca_baseline(self.train_set[0], self.images, k)
        pca_knn = analysis.knn_predict(pca['train_codes'], train_labels, pca['test_codes'], KNN_K)
        m.update({
            'test_loss': scores['loss'].mean().item(),
            **{f'test_{name}': scores[name].mean().item() for name in scores if name not in ('loss', 'sse', 'bce')},
            'sse_per_image': scores['sse'].mean().item(),
            'bce_per_image': scores['bce'].mean().item(),
            'knn_accuracy': (knn == test_labels).float().mean().item(),
            'pca_components': k,
            'pca_sse_per_image': pca['sse'].mean().item(),
            'pca_bce_per_image': pca['bce'].mean().item(),
            'pca_knn_accuracy': (pca_knn == test_labels).float().mean().item(),
            'code_near_zero': (self.test_codes.abs() < NEAR_ZERO).float().mean().item(),
        })
        if self.config.get('noise'):
            m['noisy_sse_per_image'] = self.noisy_sse().mean().item()
        if self.model.has_prior:
            neg_elbo, neg_iwae = analysis.variational_bounds(self.model, self.images, self.args.iw_samples)
            m.update({'neg_elbo': neg_elbo.mean().item(), 'kl': scores['kl'].mean().item(),
                      'active_units': analysis.active_units(self.test_codes),
                      'iwae_samples': self.args.iw_samples, 'iwae_nll': neg_iwae.mean().item()})
        print_metrics(m)
        return [self.path('metrics.json')]  # written by main() with whatever else was measured

    @torch.no_grad()
    def noisy_sse(self):
        """Per test image: the squared error of the reconstruction of a corrupted copy,
        against the clean image."""
        errors = []
        for batch in self.images.split(self.args.batch_size):
            x = to_input(batch)
            errors.append(analysis.reconstruction_errors(self.model(self.model.corrupt(x)), x)[0])
        return torch.cat(errors)

    def curves(self):
        history = self.history
        parts = [k[len('train_'):] for k in history[0] if k.startswith('train_')]
        # A part equal to the loss (an AE's recon without penalties) would only repeat its panel.
        parts = [p for p in parts if p == 'loss' or any(h[f'train_{p}'] != h['train_loss'] for h in history)]
        fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
        epochs = [h['epoch'] for h in history]
        for ax, part in zip(axes[0], parts):
            for split, style in (('train', '-'), ('valid', '--')):
                ax.plot(epochs, [h[f'{split}_{part}'] for h in history], style, marker='.', label=split)
            ax.set_xlabel('epoch')
            ax.set_ylabel(f'{part} per image')
            ax.set_yscale('log')  # the first epochs fall steeply; later ones still show
            ax.set_title(part)
            ax.legend()
        fig.suptitle(f'{os.path.basename(self.args.model_fn)}: losses per epoch')
        return [save_figure(fig, self.path('curves.png'))]


def print_metrics(m):
    rows = [('reconstruction, squared error per image', 'sse_per_image', 'pca_sse_per_image'),
            ('reconstruction, BCE per image', 'bce_per_image', 'pca_bce_per_image'),
            (f'{KNN_K}-NN accuracy of the codes', 'knn_accuracy', 'pca_knn_accuracy')]
    print(f'\n{"test set (" + str(m["n_test"]) + " images)":<42} {"model":>10} {"PCA-" + str(m["pca_components"]):>10}')
    for label, ours, baseline in rows:
        print(f'{label:<42} {m[ours]:>10.4f} {m[baseline]:>10.4f}')
    if 'noisy_sse_per_image' in m:
        print(f'{"  the same from noisy inputs":<42} {m["noisy_sse_per_image"]:>10.4f}')
    print(f'{f"code activations with |z| < {NEAR_ZERO}":<42} {m["code_near_zero"]:>10.2%}')
    if 'neg_elbo' in m:
        print(f'{"negative ELBO (nats per image)":<42} {m["neg_elbo"]:>10.4f}')
        print(f'{"  of which KL":<42} {m["kl"]:>10.4f}')
        print(f'{"-log p(x), IWAE, " + str(m["iwae_samples"]) + " samples":<42} {m["iwae_nll"]:>10.4f}')
        print(f'{"active latent units":<42} {m["active_units"]:>10d}')


def save_figure(fig, path):
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)
    return path


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
    return save_figure(fig, path)


def save_image_grid(images, path, title, n_cols=8):
    rows = [('', images[i:i + n_cols]) for i in range(0, len(images), n_cols)]
    return save_image_rows(rows, path, title)


def applicable(model_btl_size):
    return [w for w in WHAT if model_btl_size == 2 or w not in NEEDS_2D_CODE]


def main(argv=None):
    args = define_argparser().parse_args(argv)
    device = get_device(args.gpu_id)
    checkpoint = load_checkpoint(args.model_fn)
    config = checkpoint['config']
    model = model_from_checkpoint(checkpoint, args.model_fn).to(device).eval()
    btl_size = config['btl_size']
    what = args.what or applicable(btl_size)
    for w in what:
        if w in NEEDS_2D_CODE and btl_size != 2:
            raise CliError(f'--what {w} needs a 2-d code; this model\'s code has {btl_size} dimensions')
    out_dir = args.out_dir or os.path.splitext(args.model_fn)[0] + '_predict'
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise CliError(f'--out_dir {out_dir}: cannot create it ({e.strerror})')
    check_writable(os.path.join(out_dir, 'metrics.json'))
    set_seed(args.seed)

    report = Report(model, checkpoint, args, device, out_dir)
    classes = 'all classes' if not config['target_labels'] else 'classes ' + ' '.join(map(str, config['target_labels']))
    print(f'{report.dataset} test set: {len(report.images)} images ({classes})')
    print(f'test: {format_losses(report.test_losses())}')

    written = []
    for w in what:
        written += getattr(report, w)()
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
        json.dump(report.results, f, indent=2)
    for path in dict.fromkeys(written + [os.path.join(out_dir, 'metrics.json')]):
        print(f'wrote {path}')


if __name__ == '__main__':
    run_cli(main, 'predict.py')
