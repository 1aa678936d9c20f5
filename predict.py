"""Looks inside a checkpoint made by train.py: test metrics, baselines and figures.

    python predict.py --model_fn ae.pth [--what recon latent ...]
"""
import json
import os
import sys
from functools import cached_property

import numpy as np
import torch
from torch.distributions import Normal

import analysis
from anomaly import SCORES, compute_score, scores_of
import figures
from checkpoint import check_writable, load_model
from data_loader import DATASETS, DataError, class_indices, class_names, eval_images, run_images, test_files, to_input
from runlog import add_test_metrics, default_log_dir
from trainer import format_losses
from utils import (EVAL_BATCH_SIZE, EVAL_SEED, ArgumentParser, CliError, add_device_flags, get_device,
                   int_at_least, make_out_dir, run_cli, seeded, set_seed, set_threads)

WHAT = ['recon', 'latent', 'boundary', 'manifold', 'samples', 'interp', 'anomaly', 'metrics', 'curves', 'codes']
OPT_IN = {'codes'}  # made only when --what names it: a file of every test image's code and reconstruction
NEEDS_2D_CODE = {'boundary', 'manifold'}
NEEDS_LABELS = {'boundary'}
SHOWN_SEED = 0  # the seeded choice of the test images that the figures show


def define_argparser():
    p = ArgumentParser(prog='predict.py', description=__doc__.strip().splitlines()[0], allow_abbrev=False)
    p.add_argument('--model_fn', required=True, help='checkpoint written by train.py')
    p.add_argument('--what', nargs='+', choices=WHAT, default=None,
                   help='what to make (default: all that apply; boundary and manifold need a 2-d code): '
                        'recon: test images and reconstructions (denoising models: noisy, denoised, clean too); '
                        'latent: test codes by class; boundary: kNN '
                        'decision regions in the code plane; manifold: images decoded from a grid over the code '
                        'plane; samples: generated images; interp: images between two codes; anomaly: per-image '
                        'scores, the most anomalous images and ROC AUC; metrics: metrics.json and a table beside '
                        'PCA; curves: loss per epoch; codes (only when named): codes.npz, the test images\' codes, '
                        'labels, file names and reconstructions, for numpy or any other tool')
    add_device_flags(p)
    p.add_argument('--out_dir', default=None,
                   help='folder for the figures and metrics.json (default: MODEL_predict beside the checkpoint)')
    p.add_argument('--overwrite', action='store_true',
                   help='write into an --out_dir that already holds files, replacing them (without it such a '
                        'folder is left as it is)')
    p.add_argument('--dataset', choices=list(DATASETS), default=None,
                   help='evaluate on this data set instead of the one the model was trained on')
    p.add_argument('--data_dir', default=None, help='read the data from here instead of the saved --data_dir')
    p.add_argument('--batch_size', type=int_at_least(1), default=EVAL_BATCH_SIZE, help='(default: %(default)s)')
    p.add_argument('--n_images', type=int_at_least(1), default=10,
                   help='test images in the reconstruction figure (default: %(default)s)')
    g = p.add_mutually_exclusive_group()
    g.add_argument('--interp', type=int, nargs=2, metavar=('A', 'B'),
                   help='interpolate between test images number A and B')
    g.add_argument('--interp_classes', nargs=2, metavar=('A', 'B'),
                   help='interpolate between the first test images of classes A and B, by index or name (default: '
                        'the first two classes, or test images 0 and 1 when the data has no classes)')
    p.add_argument('--train_codes', action='store_true',
                   help='--what codes: the codes and labels of the training images too')
    p.add_argument('--n_samples', type=int_at_least(1), default=64,
                   help='--what samples: how many images to generate, drawn in samples.png and kept with their codes '
                        'in samples.npz (default: %(default)s)')
    p.add_argument('--interp_steps', type=int_at_least(2), default=10, help='(default: %(default)s)')
    p.add_argument('--iw_samples', type=int_at_least(1), default=None,
                   help='VAE: samples per image for the importance-weighted bound on -log p(x) (nats of -log p(x) '
                        'only for binary pixels or a density of the pixels; for grayscale pixels under a Bernoulli, a '
                        f'cross-entropy) (default: {analysis.IW_SAMPLES})')
    p.add_argument('--anomaly_score', choices=list(SCORES), default=None,
                   help='--what anomaly: the score of each test image, as oneclass.py scores it (default: neg_elbo '
                        'for a VAE, recon for an AutoEncoder): ' +
                        '; '.join(f'{name}: {score.description}' for name, score in SCORES.items()))
    p.add_argument('--seed', type=int, default=0, help='seeds samples and the IWAE estimate (default: %(default)s)')
    p.add_argument('--log_dir', default=None,
                   help="the training run's log, where the test metrics are added for TensorBoard (default: MODEL_log "
                        "beside the checkpoint, when it is there)")
    return p


class Report:
    """One model on its test set. Each --what is a method that writes its figures and returns
    (the paths written, the metrics measured); codes and scores are computed once, when first
    needed."""

    def __init__(self, model, checkpoint, args, device, out_dir):
        self.model, self.args, self.out_dir = model, args, out_dir
        self.config, self.history = checkpoint['config'], checkpoint['history']
        data = self.config.data
        self.dataset = args.dataset or data.dataset
        self.data_dir = args.data_dir or data.data_dir
        self.labelled = class_names(self.dataset, self.data_dir) is not None
        self.class_names = class_names(self.dataset, self.data_dir) or ['all images']
        # The images as the model takes them: another data set is resized and converted to its shape.
        self.image_shape = self.config.model.image_shape
        # Every test image, for anomaly detection; the rest uses the classes trained on.
        test_images, test_labels = self.load(False)
        self.all_images, self.all_labels = test_images.to(device), test_labels.to(device)
        self.known = (torch.isin(self.all_labels, torch.tensor(data.target_labels, device=device))
                      if data.target_labels else torch.ones_like(self.all_labels, dtype=torch.bool))
        self.images, self.labels = self.all_images[self.known], self.all_labels[self.known]

    def load(self, train):
        """The model's training set (data_loader.RunImages) or its test set (images, labels), resized
        and converted to its image shape, from the data set being evaluated."""
        return run_images(self.config, train, self.dataset, self.data_dir, shape=self.image_shape)

    @cached_property
    def mismatch(self):
        """How the images evaluated on differ from those the model was trained on, in words; None when they
        are the same data set."""
        trained_on = self.config.data
        same_folder = os.path.abspath(self.data_dir) == os.path.abspath(trained_on.data_dir)
        if self.dataset == trained_on.dataset and (self.dataset != 'folder' or same_folder):
            return None
        def named(dataset, data_dir):
            return dataset if dataset != 'folder' else f'the folder {data_dir}'
        trained, shown = named(trained_on.dataset, trained_on.data_dir), named(self.dataset, self.data_dir)
        return (f'trained on {trained}, evaluated on {shown}, its images converted to the model\'s '
                f'{" x ".join(map(str, self.image_shape))}')

    @property
    def model_name(self):
        return f'{os.path.basename(self.args.model_fn)} ({type(self.model).__name__})'

    @property
    def subject(self):
        """What every figure's title starts with: the model and the data it is shown on."""
        return f'{self.model_name} on {self.dataset}'

    @property
    def anomaly_score_name(self):
        return self.args.anomaly_score or ('neg_elbo' if self.model.has_prior else 'recon')

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def save(self, fig, name):
        return figures.save(fig, self.path(name))

    def decode(self, z):
        with torch.no_grad():
            return self.pictures(self.model.decode(z))

    def pictures(self, x):
        """Flat images (n, C * H * W) as (n, C, H, W), for the figures."""
        return x.view(len(x), *self.image_shape)

    @cached_property
    def train_set(self):
        """The images the model was trained on: the same classes and the same seeded split (of
        the data set being evaluated, when --dataset names another), binarized as its valid images are."""
        data = self.load(True)
        images = eval_images(self.config, data.images, data.train)
        return images.to(self.images.device), data.labels[data.train].to(self.images.device)

    @cached_property
    def evaluation(self):
        """The evaluation of every test image (analysis.Evaluation): each per-image quantity computed once."""
        return analysis.Evaluation(self.model, lambda: self.train_set[0], self.all_images, self.args.iw_samples,
                                   self.args.batch_size)

    @cached_property
    def losses(self):
        """Per-image loss, its parts, sse and bce (analysis.image_scores) of the test images of the classes
        trained on."""
        return {name: value[self.known] for name, value in self.evaluation.losses.items()}

    @property
    def train_codes(self):
        return self.evaluation.train_codes

    @cached_property
    def test_codes(self):
        """The codes of the test images of the classes trained on."""
        return self.evaluation.test_codes[self.known]

    @cached_property
    def code_range(self):
        """The box that holds the central 99% of the training and test codes, 5% wider."""
        return analysis.central_box(torch.cat([self.train_codes, self.test_codes]))

    # --- one method for each --what ---

    @cached_property
    def shown(self):
        """The test images that the figures show: a fixed, seeded choice of --n_images, one of each class
        in turn (class order, then again), so that a figure is a sample of the classes and not of the
        first one in the folder; with the class of each."""
        generator = torch.Generator().manual_seed(SHOWN_SEED)
        labels = self.labels.cpu()
        by_class = [(labels == c).nonzero().flatten() for c in labels.unique().tolist()]
        by_class = [members[torch.randperm(len(members), generator=generator)] for members in by_class]
        chosen, turn = [], 0
        while len(chosen) < min(self.args.n_images, len(labels)):
            chosen += [members[turn] for members in by_class if turn < len(members)]
            turn += 1
        chosen = torch.stack(chosen[:self.args.n_images]).to(self.images.device)
        names = [self.class_names[c] for c in self.labels[chosen].tolist()] if self.labelled else None
        return chosen, names

    def recon(self):
        chosen, names = self.shown
        x = to_input(self.images[chosen])
        subject = f'{self.subject}: test images' + (', one of each class in turn,' if self.labelled else '')
        with torch.no_grad():
            rows = [('original', self.pictures(x)), ('reconstruction', self.pictures(self.model(x)))]
            written = [self.save(figures.image_rows(rows, f'{subject} and their reconstructions', names),
                                 'reconstructions.png')]
            m = self.config.model
            if m.noise:
                noisy = self.model.corrupt(x)
                rows = [(name, self.pictures(images)) for name, images in
                        (('noisy', noisy), ('denoised', self.model(noisy)), ('clean', x))]
                title = f'{self.subject}: {m.noise} noise, level {m.noise_level}'
                written.append(self.save(figures.image_rows(rows, title, names), 'denoising.png'))
        return written, {}

    def latent(self):
        codes, k = self.test_codes, self.test_codes.shape[1]
        title, axis_names = 'test codes', ('z1', 'z2')
        if k > 2:
            codes = analysis.PCA(codes, 2).encode(codes)
            title, axis_names = f'test codes ({k}-d, projected on their first 2 principal components)', ('PC 1', 'PC 2')
        fig = figures.codes_by_class(codes, self.labels, self.class_names, f'{self.subject}: {title}', axis_names)
        return [self.save(fig, 'latent.png')], {}

    def boundary(self):
        (x0, y0), (x1, y1) = (t.tolist() for t in self.code_range)
        n = 150
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, n), torch.linspace(y0, y1, n), indexing='xy')
        grid = torch.stack([gx.flatten(), gy.flatten()], 1).to(self.train_codes.device)
        # 10,000 training codes draw the same regions as all of them, several times faster.
        some = torch.randperm(len(self.train_codes), device=grid.device)[:10000]
        regions = analysis.knn_predict(self.train_codes[some], self.train_set[1][some], grid, analysis.KNN_K).view(n, n)
        fig = figures.decision_regions(regions, (x0, x1, y0, y1), self.test_codes, self.labels, self.class_names,
                                       f'{self.subject}: decision regions of a {analysis.KNN_K}-NN classifier on the '
                                       f'training codes, test codes on top')
        return [self.save(fig, 'boundary.png')], {}

    def manifold(self, n=20):
        if self.model.has_prior and self.config.model.prior == 'normal':
            # Equal steps of probability under the N(0, 1) prior of each coordinate.
            axis = [Normal(0., 1.).icdf(torch.linspace(.03, .97, n))] * 2
            how = 'through the inverse CDF of N(0, 1)'
        elif self.model.has_prior:
            # Another prior's equal steps of probability, each coordinate's quantiles of 10,000 draws of it.
            with seeded(EVAL_SEED, self.test_codes.device):
                draws = self.model.sample_prior(10000, self.test_codes.device).cpu()
            axis = [torch.quantile(draws[:, i], torch.linspace(.03, .97, n)) for i in range(2)]
            how = f'through the quantiles of the prior, {self.model.prior.label}'
        else:
            low, high = self.code_range
            axis = [torch.linspace(low[i].item(), high[i].item(), n) for i in range(2)]
            how = 'over the central 99% of the codes'
        gx, gy = torch.meshgrid(axis[0], axis[1].flip(0), indexing='xy')  # z2 grows upwards
        images = self.decode(torch.stack([gx.flatten(), gy.flatten()], 1).to(self.test_codes.device))
        empty = analysis.empty_tiles(self.test_codes.cpu(), axis)
        title = (f'{self.subject}: decoded from a {n} x {n} grid {how}; faded: the {int(empty.sum())} tiles with no '
                 f'test code in or beside them')
        fig = figures.decoded_grid(images, axis, title, faded=empty)
        return [self.save(fig, 'manifold.png')], {}

    def samples(self):
        n = self.args.n_samples
        if self.model.has_prior:
            z = self.model.sample_prior(n, self.test_codes.device)
            title = f'decoded from z ~ p(z), {self.model.prior.label}'
        else:
            # An AutoEncoder has no prior; a Gaussian fitted to its codes lands in gaps and
            # off the code manifold, which is why an AE is a poor generator.
            z = analysis.fit_gaussian(self.train_codes).sample((n,))
            title = 'decoded from a Gaussian fitted to the training codes'
        images = self.decode(z)
        np.savez_compressed(self.path('samples.npz'), images=images.cpu().numpy(), codes=z.cpu().numpy())
        return [self.save(figures.image_grid(images, f'{self.subject}: {title}'), 'samples.png'),
                self.path('samples.npz')], {}

    def codes(self):
        """codes.npz: the codes of the test images (of the classes trained on), their labels, positions in
        the test set and, for a folder, file names, their reconstructions (uint8, as the images), the class
        names; with --train_codes, the training images' codes and labels too."""
        with torch.no_grad():
            reconstructions = torch.cat([self.model(to_input(batch))
                                         for batch in self.images.split(self.args.batch_size)])
        arrays = dict(codes=self.test_codes, labels=self.labels, index=self.known.nonzero().flatten(),
                      reconstructions=(self.pictures(reconstructions).clamp(0, 1) * 255).round().to(torch.uint8))
        arrays = {name: value.cpu().numpy() for name, value in arrays.items()}
        files = test_files(self.dataset, self.data_dir)
        if files is not None:
            arrays['files'] = np.array(files)[arrays['index']]
        if self.args.train_codes:
            arrays.update(train_codes=self.train_codes.cpu().numpy(), train_labels=self.train_set[1].cpu().numpy())
        np.savez_compressed(self.path('codes.npz'), class_names=np.array(self.class_names), **arrays)
        return [self.path('codes.npz')], {}

    def interp(self):
        a, b = self.interp_endpoints()
        z = analysis.encode_all(self.model, self.images[[a, b]])
        t = torch.linspace(0, 1, self.args.interp_steps, device=z.device)[:, None]
        ends = torch.ones(self.args.interp_steps, *self.image_shape, device=z.device)  # blank between the ends
        ends[[0, -1]] = self.pictures(to_input(self.images[[a, b]]))
        rows = [('test images', ends), ('decoded', self.decode((1 - t) * z[0] + t * z[1]))]
        names = [f' ({self.class_names[self.labels[i]]})' if self.labelled else '' for i in (a, b)]
        title = f'{self.subject}: test image {a}{names[0]} to test image {b}{names[1]}, {self.args.interp_steps} steps'
        return [self.save(figures.image_rows(rows, title), 'interp.png')], {}

    def interp_endpoints(self):
        n = len(self.images)
        if self.args.interp:
            bad = [i for i in self.args.interp if not 0 <= i < n]
            if bad:
                raise CliError(f'--interp {bad[0]}: test images are numbered 0 to {n - 1}')
            return self.args.interp
        if not self.labelled:
            if self.args.interp_classes:
                raise CliError('--interp_classes: this data set has no classes; give --interp A B (test image '
                               'numbers)')
            return [0, 1]
        classes = ([class_indices([c], self.class_names, '--interp_classes')[0] for c in self.args.interp_classes]
                   if self.args.interp_classes else self.labels.unique()[:2].tolist())
        ends = []
        for c in classes:
            found = (self.labels == c).nonzero()
            if len(found) == 0:
                raise CliError(f'--interp_classes {c}: no test image of that class')
            ends.append(int(found[0]))
        return ends

    def anomaly(self):
        name = self.anomaly_score_name
        score = compute_score(self.evaluation, name).cpu()
        labels = self.all_labels.cpu()
        what = f'{name}: {SCORES[name].description}'
        print(f'anomaly score: {what}')
        measured = {'anomaly_score': name}
        title = f'{self.subject}: anomaly scores ({name}) of the test images by class'
        normal = self.config.data.target_labels
        if normal:
            is_anomaly = ~torch.isin(labels, torch.tensor(normal))
            measured['anomaly_roc_auc'] = analysis.roc_auc(score, is_anomaly)
            title += f'; classes not trained on as anomalies: ROC AUC {measured["anomaly_roc_auc"]:.3f}'
            print(f'anomaly ROC AUC (classes {" ".join(map(str, normal))} normal): '
                  f'{measured["anomaly_roc_auc"]:.4f}')
        hist = figures.histograms_by_class(score, labels, self.class_names, f'anomaly score ({what})', title)
        top = score.topk(min(16, len(score))).indices
        captions = [f'{score[i]:.4g}' + (f' {self.class_names[labels[i]]}' if self.labelled else '')
                    for i in top.tolist()]
        worst = figures.image_grid(self.pictures(to_input(self.all_images[top])),
                                   f'{self.subject}: the {len(top)} most anomalous test images by {name}, with '
                                   f'score{" and class" if self.labelled else ""}', captions=captions)
        return [self.save(hist, 'anomaly_hist.png'), self.save(worst, 'anomalies.png')], measured

    def metrics(self):
        labels = (self.train_set[1], self.all_labels) if self.labelled else None  # else no classes for kNN
        m = analysis.test_metrics(self.evaluation, self.config.model, self.known, labels)
        print('\n' + metrics_table(m))
        for warning in below_baseline(m, self.mismatch):
            print(f'predict.py: {warning}', file=sys.stderr)
        return [], m.as_dict()

    def curves(self):
        loss = 'negative ELBO' if self.model.has_prior else 'reconstruction error'
        title = f'{self.model_name}: the {loss} per image (--likelihood {self.config.model.likelihood}) by epoch'
        fig = figures.loss_curves(self.history, title)
        return [self.save(fig, 'curves.png')], {}


def metrics_table(m):
    """The metrics (analysis.Metrics) as the table that predict.py prints, the model beside PCA."""
    vae = m.variational
    recon = 'reconstruction at z = mu' if vae else 'reconstruction'
    rows = [(f'{recon}, squared error per image', m.sse_per_image, m.pca_sse_per_image, False),
            (f'{recon}, cross-entropy per image', m.bce_per_image, m.pca_bce_per_image, False),
            (f'{analysis.KNN_K}-NN accuracy of the codes', m.knn_accuracy, m.pca_knn_accuracy, True),
            ('  the same inside the training set, leave-one-out', m.train_knn_accuracy, m.pca_train_knn_accuracy,
             True)]
    header = f'test set ({m.n_test} images)'
    lines = [f'{header:<50} {"model":>10} {"PCA-" + str(m.pca_components):>10}  model against PCA']
    lines += [f'{label:<50} {ours:>10.4f} {baseline:>10.4f}  {margin(ours, baseline, higher, m.n_test)}'
              for label, ours, baseline, higher in rows if ours is not None]
    singles = [(m.noisy_sse_per_image, '  the same from noisy inputs', '.4f'),
               (m.code_near_zero, f'code activations with |z| < {analysis.NEAR_ZERO}', '.2%')]
    if vae:
        what = 'nats per image' if vae.nats_of_log_px else 'as a cross-entropy'
        singles += [(vae.neg_elbo, f'negative ELBO, {what}', '.4f'),
                    (m.own_losses['kl'], '  of which KL (one z per image)', '.4f'),
                    (vae.iwae, f'{"-log p(x)" if vae.nats_of_log_px else "cross-entropy"}, IWAE bound, '
                               f'{vae.iwae_samples} samples', '.4f'),
                    (vae.iwae_std_error, '  its standard error over the images', '.4f'),
                    (vae.active_units, 'active latent units', 'd')]
    lines += [f'{label:<50} {value:>10{spec}}' for value, label, spec in singles if value is not None]
    if vae:
        lines.append(f'likelihood: {vae.likelihood}')
    return '\n'.join(lines)


# How far apart the same command's numbers fall from seed to seed (docs/results.md): on Fashion-MNIST's
# 10,000 test images the 2-d AE's squared error and 5-NN accuracy spanned 2.7% and 2.5% of their means
# over seeds 1-3; on the 60 test images of a 300-image folder, its squared error 9.3%.
SEED_SPREAD, SMALL_TEST_SET, SMALL_SEED_SPREAD = .03, 1000, .10


def seed_spread(n_test):
    return SMALL_SEED_SPREAD if n_test < SMALL_TEST_SET else SEED_SPREAD


def verdict(ours, baseline, higher_is_better, n_test):
    """'better' or 'worse' where the model's number differs from PCA's by more than the seed-to-seed
    spread of the same command; None within it, which says nothing either way."""
    if not baseline or abs(ours / baseline - 1) <= seed_spread(n_test):
        return None
    return 'better' if (ours > baseline) == higher_is_better else 'worse'


def margin(ours, baseline, higher_is_better, n_test):
    """The model's number against PCA's as a relative difference, and its verdict."""
    if not baseline:
        return ''
    said = verdict(ours, baseline, higher_is_better, n_test)
    return f'{ours / baseline - 1:+.1%}, {said or f"within the seed-to-seed spread ({seed_spread(n_test):.0%})"}'


def below_baseline(m, mismatch=None):
    """One line for each number of the metrics m (analysis.Metrics) in which the model does worse than
    PCA with as many components, by more than the seed-to-seed spread (the table's verdict), with what
    to try; when the images differ from the training images (mismatch), that is the likely cause, not
    the training."""
    advice = ('the model may be under-trained: train longer (--n_epochs, or leave --n_epochs and --batch_size out '
              'so that train.py fits them to the data), or try --arch conv or a wider --btl_size')
    if mismatch:
        advice = (f'the model was {mismatch}, and PCA is fitted on these images themselves: a model is judged on the '
                  f'data it was trained on')
    lines = []
    if verdict(m.sse_per_image, m.pca_sse_per_image, False, m.n_test) == 'worse':
        lines.append(f'warning: the model reconstructs worse than PCA-{m.pca_components} (squared error '
                     f'{m.sse_per_image:.4f} against {m.pca_sse_per_image:.4f} per image); {advice}')
    if m.knn_accuracy is not None and verdict(m.knn_accuracy, m.pca_knn_accuracy, True, m.n_test) == 'worse':
        # Codes that reconstruct better than PCA's are not under-trained: the loss asks for no classes,
        # and an encoder that keeps the training images' classes apart as well as PCA may not do so
        # for new images.
        if lines or mismatch:
            why = advice
        elif verdict(m.train_knn_accuracy, m.pca_train_knn_accuracy, True, m.n_test) != 'worse':
            why = (f'inside the training set they keep the classes apart as well as PCA\'s '
                   f'({m.train_knn_accuracy:.4f} against {m.pca_train_knn_accuracy:.4f}, leave-one-out): the '
                   f'encoder does not carry that over to new images; more training images, or a wider --btl_size')
        else:
            why = ('the codes reconstruct as well as PCA\'s, but a reconstruction loss does not ask them to keep the '
                   'classes apart; try a wider --btl_size')
        lines.append(f'warning: the {analysis.KNN_K}-NN accuracy of the codes is below that of '
                     f'PCA-{m.pca_components}\'s ({m.knn_accuracy:.4f} against {m.pca_knn_accuracy:.4f}); {why}')
    return lines


def applicable(model_btl_size, labelled):
    return [w for w in WHAT if (model_btl_size == 2 or w not in NEEDS_2D_CODE) and (labelled or w not in NEEDS_LABELS)
            and w not in OPT_IN]


def applicable_what(args, btl_size, labelled):
    """--what, or everything that applies to the model's code and the data's classes."""
    what = args.what or applicable(btl_size, labelled)
    for w in what:
        if w in NEEDS_2D_CODE and btl_size != 2:
            raise CliError(f'--what {w} needs a 2-d code; this model\'s code has {btl_size} dimensions')
        if w in NEEDS_LABELS and not labelled:
            raise CliError(f'--what {w} needs classes; the data set has none (a folder of images without class '
                           f'folders)')
    if not args.what and not labelled:
        print(f'skipped what needs classes, which this data set has not: kNN accuracy'
              f'{"".join(", " + w for w in NEEDS_LABELS if btl_size == 2)}')
    return what


def check_model_flags(args, model):
    """The flags that only a VAE uses, refused for an AutoEncoder; --iw_samples takes its default."""
    if not model.has_prior:
        if args.anomaly_score and args.anomaly_score not in scores_of(model):
            raise CliError(f'--anomaly_score {args.anomaly_score}: needs a VAE; this model is an AutoEncoder')
        if args.iw_samples is not None:
            raise CliError('--iw_samples: sets the importance samples of a VAE\'s -log p(x); this model is an '
                           'AutoEncoder')
    args.iw_samples = args.iw_samples or analysis.IW_SAMPLES


def needs_train_set(w, report):
    """Whether --what w reads the training images (their codes, kNN, PCA), not only the test set."""
    if w in ('boundary', 'metrics'):
        return True
    if w == 'codes':
        return report.args.train_codes
    if w in ('manifold', 'samples'):  # an AutoEncoder's: the box of its codes, a Gaussian fitted to them
        return not report.model.has_prior
    return w == 'anomaly' and SCORES[report.anomaly_score_name].needs_train_images


def available(args, report, what):
    """what, checked against the data before anything is written: what needs the training images is
    refused in one line when --what asked for it and they cannot be read, and skipped with a notice
    when it was only applicable; --interp's images are checked."""
    needing = [w for w in what if needs_train_set(w, report)]
    if needing:
        try:
            report.train_set
        except DataError as e:
            if args.what:
                raise CliError(f'--what {needing[0]} needs the training images: {e}')
            print(f'skipped what needs the training images, which cannot be read ({e}): {", ".join(needing)}')
            what = [w for w in what if w not in needing]
    if 'interp' in what:
        report.interp_endpoints()
    return what


def prepare_out_dir(out_dir, overwrite):
    """Creates out_dir; one that already holds files is written into only with --overwrite."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise CliError(f'--out_dir {out_dir} already holds files; give --overwrite to replace them or another '
                       f'--out_dir (nothing was written)')
    make_out_dir(out_dir)
    check_writable(os.path.join(out_dir, 'metrics.json'))


def main(argv=None):
    args = define_argparser().parse_args(argv)
    set_threads(args.threads)
    device = get_device(args.gpu_id)
    model, checkpoint = load_model(args.model_fn, device)
    config = checkpoint['config']
    labelled = class_names(args.dataset or config.data.dataset, args.data_dir or config.data.data_dir) is not None
    check_model_flags(args, model)
    set_seed(args.seed)
    # Everything is read and checked before the first file is written: a run that fails writes nothing.
    what = applicable_what(args, config.model.btl_size, labelled)
    out_dir = args.out_dir or os.path.splitext(args.model_fn)[0] + '_predict'
    report = Report(model, checkpoint, args, device, out_dir)
    what = available(args, report, what)
    prepare_out_dir(out_dir, args.overwrite)

    if report.mismatch:
        print(f'note: {report.mismatch}')
    classes = ('classes ' + ' '.join(map(str, config.data.target_labels)) if config.data.target_labels else
               'all classes' if labelled else 'no classes')
    print(f'{report.dataset} test set: {len(report.images)} images of {" x ".join(map(str, report.image_shape))} '
          f'({classes})')
    print(f'test, per image: {format_losses(analysis.mean_own_losses(report.losses, report.model.has_prior))}')

    written, measured = [], {'dataset': report.dataset, 'n_test': len(report.images)}
    for w in what:
        paths, numbers = getattr(report, w)()
        written += paths
        measured.update(numbers)
    metrics_path = os.path.join(out_dir, 'metrics.json')
    with open(metrics_path, 'w') as f:
        json.dump(measured, f, indent=2)
    for path in written + [metrics_path]:
        print(f'wrote {path}')
    log_dir = args.log_dir or default_log_dir(args.model_fn)
    if add_test_metrics(log_dir, measured):
        print(f'added the test metrics to the log in {log_dir}')


if __name__ == '__main__':
    run_cli(main, 'predict.py')
