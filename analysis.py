"""The numbers behind predict.py and oneclass.py, each computed in batches over a whole data set:
codes, per-image errors, kNN, ROC AUC, a PCA baseline, the importance-weighted bound; the
Evaluation of one model that computes each per-image quantity once, and the Metrics that
predict.py writes to metrics.json."""
import math
from dataclasses import dataclass, fields
from functools import cached_property
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from data_loader import to_input
from utils import EVAL_BATCH_SIZE, EVAL_SEED, keep_freed_memory, progress_bar, seeded

EPS = 1e-6  # keeps BCE finite for outputs at (or, for an MSE model, beyond) 0 and 1
NEAR_ZERO = .01  # a code activation this close to 0 counts as off, for sparse codes
# variational_bounds decodes at most this many codes at once, whatever the sample count, so that
# memory stays bounded; the sizes are measured in docs/performance.md (the importance-sampled -log p(x)).
MAX_DECODED_ROWS = {'cpu': 2048, 'cuda': 32768}
# The training-set kNN accuracy (leave-one-out) classifies at most this many training codes, each
# against all of them: within about 0.006 (the binomial standard error) of the accuracy over all of them.
LEAVE_ONE_OUT_QUERIES = 5_000
IW_SAMPLES = 100  # a VAE's importance samples per image for -log p(x), unless --iw_samples says otherwise
KNN_K = 5  # the neighbours of the kNN classifier of codes, in metrics.json and the decision regions


@torch.no_grad()
def encode_all(model, images, batch_size=EVAL_BATCH_SIZE, features=False):
    """Codes of all images (uint8, on the model's device), in eval mode; with features, the
    encoder's last hidden features instead."""
    model.eval()
    encode = model.hidden_features if features else model.encode
    return torch.cat([encode(to_input(batch)) for batch in images.split(batch_size)])
    # |z| = (n_images, btl_size), or with features (n_images, width of the last hidden layer)


def reconstruction_errors(x_hat, x):
    """Per image: the sum of squared errors and the Bernoulli cross-entropy, both summed over
    pixels, whatever loss the model was trained with."""
    sse = (x_hat - x).pow(2).sum(1)
    bce = F.binary_cross_entropy(x_hat.clamp(EPS, 1 - EPS), x, reduction='none').sum(1)
    return sse, bce


@torch.no_grad()
def image_scores(model, images, batch_size=EVAL_BATCH_SIZE):
    """Per-image tensors: the model's loss and its parts (a VAE's with codes drawn from
    EVAL_SEED, as in validation), and the sse and bce of its reconstruction."""
    model.eval()
    scores = {}
    with seeded(EVAL_SEED, images.device):
        for batch in images.split(batch_size):
            x = to_input(batch)
            loss, parts = model.image_losses(x)
            sse, bce = reconstruction_errors(model(x), x)
            for name, value in {'loss': loss, **parts, 'sse': sse, 'bce': bce}.items():
                scores.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in scores.items()}


def knn_predict(train_codes, train_labels, query_codes, k=KNN_K, chunk=1024, query_rows=None):
    """Majority label of the k nearest training codes (Euclidean) of each query code; a tie
    goes to the smallest label. query_rows: for queries that are training codes, their rows in
    train_codes, each left out of its own neighbours."""
    predictions = []
    for start in range(0, len(query_codes), chunk):
        distances = torch.cdist(query_codes[start:start + chunk], train_codes)
        # |distances| = (chunk, n_train)
        if query_rows is not None:
            rows = query_rows[start:start + chunk]
            distances[torch.arange(len(rows), device=distances.device), rows] = math.inf
        nearest = distances.topk(k, largest=False).indices
        predictions.append(torch.mode(train_labels[nearest], dim=1).values)
    return torch.cat(predictions)


def leave_one_out_accuracy(codes, labels, k=5, max_queries=LEAVE_ONE_OUT_QUERIES):
    """kNN accuracy inside a training set: each code classified by the k nearest of the others,
    on up to max_queries codes drawn with EVAL_SEED (the neighbours come from all of them). Beside
    the test accuracy it tells codes that do not keep the classes apart from an encoder that does
    so on its training images but not on new ones."""
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(EVAL_SEED))
    rows = order[:max_queries].to(codes.device)
    return (knn_predict(codes, labels, codes[rows], k, query_rows=rows) == labels[rows]).float().mean().item()


def roc_auc(scores, is_positive):
    """Area under the ROC curve of scores for telling positives from negatives: the chance
    that a random positive scores above a random negative, ties counting one half
    (the Mann-Whitney U statistic, from average ranks)."""
    scores, is_positive = scores.double().cpu(), is_positive.bool().cpu()
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError('ROC AUC needs both positives and negatives')
    sorted_scores, order = scores.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, 0) - counts + 1
    average_rank = (first_rank + (counts - 1) / 2.)[inverse]
    ranks = torch.empty_like(average_rank)
    ranks[order] = average_rank
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# PCA diagonalises the smaller of the covariance (features x features) and the Gram matrix
# (images x images): exact, and cheap for a few thousand images of any size or any number of
# small images. When both sides are larger than this, a randomized fit of the few components asked
# for (Halko et al., 2011) takes its place, in time and memory linear in the data.
EXACT_PCA_MAX_SIDE = 4096


class PCA:
    """Principal components of a data set, computed with torch in float64 from the data matrix."""

    def __init__(self, x, n_components):
        x = x.double()
        self.mean = x.mean(0)
        centered = x - self.mean
        # |centered| = (n_images, n_features)
        if min(centered.shape) <= EXACT_PCA_MAX_SIDE:
            self.components = top_directions(centered, n_components)
        else:
            with seeded(EVAL_SEED, x.device):
                _, _, v = torch.svd_lowrank(centered, q=min(n_components + 20, *centered.shape), niter=6)
            self.components = v[:, :n_components].T
        # |components| = (n_components, n_features)

    def encode(self, x):
        return ((x.double() - self.mean) @ self.components.T).to(x.dtype)

    def decode(self, z):
        return (z.double() @ self.components + self.mean).to(z.dtype)


def top_directions(centered, k):
    """The k leading right singular vectors of a centred data matrix, as rows, from the eigenvectors
    of its smaller Gram matrix. eigh sorts ascending: the last columns are the top ones."""
    n, d = centered.shape
    if d <= n:
        return torch.linalg.eigh(centered.T @ centered)[1][:, -k:].flip(1).T
    # X X^T = U S^2 U^T, so the directions are X^T U, each scaled to unit length (a direction of
    # zero variance, past the data's rank, stays zero).
    directions = centered.T @ torch.linalg.eigh(centered @ centered.T)[1][:, -k:].flip(1)
    return (directions / directions.norm(dim=0).clamp_min(1e-12)).T


@torch.no_grad()
def pca_baseline(train_images, test_images, n_components):
    """PCA fitted on the training images: per-image sse and bce of its test reconstructions,
    with its train and test codes."""
    train_x = to_input(train_images)
    pca = PCA(train_x, n_components)
    test_x = to_input(test_images)
    test_codes = pca.encode(test_x)
    sse, bce = reconstruction_errors(pca.decode(test_codes), test_x)
    return {'sse': sse, 'bce': bce, 'train_codes': pca.encode(train_x), 'test_codes': test_codes}


def decoded_rows(device):
    """The most codes that variational_bounds decodes in one pass on this device."""
    return MAX_DECODED_ROWS.get(device.type, MAX_DECODED_ROWS['cpu'])


@torch.no_grad()
def variational_bounds(model, images, n_samples, progress=False):
    """Per image, from the same n_samples draws of q(z|x): the ELBO estimate (mean of the
    log weights) and the importance-weighted bound (their log-mean-exp), both negated, in
    nats. By Jensen's inequality the second is never above the first. At most
    MAX_DECODED_ROWS codes are decoded at once: several images per pass for few samples, the
    samples of one image in several equal passes for many (their log-sum-exp accumulated in fp32)."""
    model.eval()
    keep_freed_memory()  # every pass makes and frees tensors of a few MB
    max_rows = decoded_rows(next(model.parameters()).device)
    batch_size = max(1, max_rows // n_samples)
    chunk = math.ceil(n_samples / math.ceil(n_samples / max_rows))
    neg_elbo, neg_iwae = [], []
    with progress_bar(total=len(images), shown=progress, desc=f'-log p(x), {n_samples} samples per image',
                      unit='image', leave=False) as bar:
        for batch in images.split(batch_size):
            x = to_input(batch)
            log_sum_exp = torch.full((len(x),), -math.inf, device=x.device)
            total = torch.zeros(len(x), device=x.device)
            for start in range(0, n_samples, chunk):
                log_w = model.log_importance_weights(x, min(chunk, n_samples - start))
                # |log_w| = (samples in this chunk, batch_size)
                log_sum_exp = torch.logaddexp(log_sum_exp, torch.logsumexp(log_w, 0))
                total += log_w.sum(0)
            neg_elbo.append(-total / n_samples)
            neg_iwae.append(math.log(n_samples) - log_sum_exp)
            bar.update(len(x))
    return torch.cat(neg_elbo), torch.cat(neg_iwae)


def active_units(mu, threshold=.01):
    """Latent dimensions whose posterior mean varies across the data: Cov_x(E_q[z_u]) > 0.01
    (Burda et al., 2016)."""
    return int((mu.var(0) > threshold).sum())


def knn_distance(reference, query, k=1, chunk=1024):
    """Per query row: the mean Euclidean distance to its k nearest rows of reference."""
    distances = [torch.cdist(q.float(), reference.float()).topk(k, largest=False).values.mean(1)
                 for q in query.split(chunk)]
    return torch.cat(distances)


def gaussian_nll(reference, query, ridge=0.):
    """Per query row: -log density under a full-covariance Gaussian fitted to reference."""
    return -fit_gaussian(reference.double(), ridge).log_prob(query.double()).float()


def fit_gaussian(codes, ridge=0.):
    """A full-covariance Gaussian fitted to codes, to sample an AutoEncoder's code space. ridge
    adds that share of the mean variance to every variance: a covariance of more dimensions than
    the codes can pin down becomes a usable one."""
    mean = codes.mean(0)
    cov = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    cov = cov + (ridge * cov.diagonal().mean() + 1e-6) * torch.eye(len(mean), dtype=cov.dtype,
                                                                    device=codes.device)  # stays positive definite
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def central_box(codes, share=.99, margin=.05):
    """The box (low, high) per dimension that holds the central share of the codes, widened by
    margin of its size on each side: a few outlying codes do not shrink the picture of the rest."""
    tail = (1 - share) / 2
    low, high = torch.quantile(codes.float(), torch.tensor([tail, 1 - tail], device=codes.device), dim=0)
    # |low| = |high| = (btl_size,)
    pad = margin * (high - low)
    return low - pad, high + pad


def own_losses(scores, has_prior):
    """The model's own loss and its parts per image, each number once and named for what it is.
    A VAE's are the two terms of its negative ELBO with one z drawn per image: recon_at_drawn_z,
    -log p(x|z), and kl (neg_elbo, from many draws, is the estimate to quote). An AutoEncoder's
    are its reconstruction error and penalties, and their sum as loss where it has a penalty."""
    own = {name: value for name, value in scores.items() if name not in ('sse', 'bce')}
    if has_prior:
        return {'recon_at_drawn_z': own['recon'], 'kl': own['kl']}
    loss = own.pop('loss')
    return {'loss': loss, **own} if len(own) > 1 else own


def mean_own_losses(losses, has_prior):
    """own_losses() of image_scores() averaged over the images: the losses per image of a data set."""
    return {name: value.mean().item() for name, value in own_losses(losses, has_prior).items()}


class Bounds(NamedTuple):
    """Per test image, from the same n_samples draws of q(z|x): variational_bounds()."""
    neg_elbo: torch.Tensor
    neg_iwae: torch.Tensor
    n_samples: int

    def of(self, keep):
        """The bounds of the images that the bool mask keep selects."""
        return Bounds(self.neg_elbo[keep], self.neg_iwae[keep], self.n_samples)


class Evaluation:
    """One model on its test images and training images (uint8, on the model's device): every per-image
    quantity computed once, when a metric, a score or a figure first needs it: the model's own losses,
    its variational bounds, its codes and its last hidden features. predict.py and oneclass.py read
    them here. The training images are loaded by load_train_images only for what compares with them,
    so that what needs the model alone works on a data set of test images only."""

    def __init__(self, model, load_train_images, test_images, iw_samples=IW_SAMPLES, batch_size=EVAL_BATCH_SIZE):
        self.model, self.load_train_images, self.test_images = model, load_train_images, test_images
        self.iw_samples, self.batch_size = iw_samples, batch_size

    @cached_property
    def train_images(self):
        return self.load_train_images()

    @cached_property
    def losses(self):
        """Per test image: the model's loss and its parts, sse and bce (image_scores)."""
        return image_scores(self.model, self.test_images, self.batch_size)

    @cached_property
    def bounds(self):
        """Per test image: the negative ELBO and the importance-weighted -log p(x) bound."""
        return Bounds(*variational_bounds(self.model, self.test_images, self.iw_samples, progress=True),
                      self.iw_samples)

    @cached_property
    def train_codes(self):
        return encode_all(self.model, self.train_images, self.batch_size)

    @cached_property
    def test_codes(self):
        return encode_all(self.model, self.test_images, self.batch_size)

    @property
    def codes(self):
        return self.train_codes, self.test_codes

    @cached_property
    def features(self):
        """The encoder's last hidden features of the training and of the test images."""
        return tuple(encode_all(self.model, images, self.batch_size, features=True)
                     for images in (self.train_images, self.test_images))


@dataclass(frozen=True)
class VariationalMetrics:
    """A VAE's numbers on a test set, per image."""
    likelihood: str  # the likelihood part's describe()
    nats_of_log_px: bool  # the bounds are nats of -log p(x) only where the likelihood is a density of the data
    neg_elbo: float
    iwae: float  # the importance-weighted bound: -log p(x), or a cross-entropy
    iwae_std_error: float  # over the images
    iwae_samples: int
    active_units: int

    def as_dict(self):
        """metrics.json's keys: the IWAE bound is iwae_nll where it estimates -log p(x), else
        iwae_cross_entropy."""
        iwae = 'iwae_nll' if self.nats_of_log_px else 'iwae_cross_entropy'
        return {'likelihood': self.likelihood, 'nats_of_log_px': self.nats_of_log_px, 'neg_elbo': self.neg_elbo,
                'active_units': self.active_units, 'iwae_samples': self.iwae_samples, iwae: self.iwae,
                iwae + '_std_error': self.iwae_std_error}


@dataclass(frozen=True)
class Metrics:
    """predict.py's metrics of one model on a test set, beside PCA with as many components; a number
    that does not apply to the model or the data is None."""
    n_test: int
    own_losses: dict  # own_losses(): the model's loss and its parts, per image
    sse_per_image: float
    bce_per_image: float
    pca_components: int
    pca_sse_per_image: float
    pca_bce_per_image: float
    knn_accuracy: Optional[float] = None  # labelled data: KNN_K-NN classification of the test codes
    pca_knn_accuracy: Optional[float] = None
    train_knn_accuracy: Optional[float] = None  # the same inside the training set, leave-one-out
    pca_train_knn_accuracy: Optional[float] = None
    code_near_zero: Optional[float] = None  # a sparse code: the share of activations near 0
    noisy_sse_per_image: Optional[float] = None  # a denoiser: the squared error from noisy inputs
    variational: Optional[VariationalMetrics] = None  # a VAE

    def as_dict(self):
        """The metrics as metrics.json holds them: one flat dict of the numbers that apply."""
        flat = {'n_test': self.n_test, **self.own_losses}
        flat.update({f.name: getattr(self, f.name) for f in fields(self)
                     if f.name not in ('n_test', 'own_losses', 'variational') and getattr(self, f.name) is not None})
        return {**flat, **(self.variational.as_dict() if self.variational else {})}


def test_metrics(evaluation, model_config, known, labels=None):
    """Every number of predict.py's metrics table (Metrics) for the model of an Evaluation, over the
    test images that the bool mask known keeps: its own losses, its
    reconstruction errors, kNN on its codes, the same for PCA with as many components, and what
    applies to this model (a VAE's bounds and active units, a sparse code's near-zero share, a
    denoiser's error from noisy inputs). labels: the (training, test) labels, for the kNN accuracy
    of labelled data."""
    e, model = evaluation, evaluation.model
    test_images, test_codes = e.test_images[known], e.test_codes[known]
    losses = {name: value[known] for name, value in e.losses.items()}
    k = test_codes.shape[1]
    pca = pca_baseline(e.train_images, test_images, k)
    m = dict(n_test=len(test_images), own_losses=mean_own_losses(losses, model.has_prior),
             sse_per_image=losses['sse'].mean().item(), bce_per_image=losses['bce'].mean().item(),
             pca_components=k, pca_sse_per_image=pca['sse'].mean().item(), pca_bce_per_image=pca['bce'].mean().item())
    if labels is not None:
        train_labels, test_labels = labels[0], labels[1][known]
        knn = knn_predict(e.train_codes, train_labels, test_codes, KNN_K)
        pca_knn = knn_predict(pca['train_codes'], train_labels, pca['test_codes'], KNN_K)
        m.update(knn_accuracy=(knn == test_labels).float().mean().item(),
                 pca_knn_accuracy=(pca_knn == test_labels).float().mean().item(),
                 train_knn_accuracy=leave_one_out_accuracy(e.train_codes, train_labels, KNN_K),
                 pca_train_knn_accuracy=leave_one_out_accuracy(pca['train_codes'], train_labels, KNN_K))
    if model_config.l1 or model_config.sparsity:
        m['code_near_zero'] = (test_codes.abs() < NEAR_ZERO).float().mean().item()
    if model_config.noise:
        m['noisy_sse_per_image'] = noisy_errors(model, test_images, e.batch_size).mean().item()
    if model.has_prior:
        likelihood, nats = model.likelihood.describe()
        bounds = e.bounds.of(known)
        m['variational'] = VariationalMetrics(
            likelihood, nats, bounds.neg_elbo.mean().item(), bounds.neg_iwae.mean().item(),
            (bounds.neg_iwae.std() / math.sqrt(len(bounds.neg_iwae))).item(), bounds.n_samples,
            active_units(test_codes))
    return Metrics(**m)


@torch.no_grad()
def noisy_errors(model, images, batch_size=EVAL_BATCH_SIZE):
    """Per image: the squared error of the reconstruction of a corrupted copy (the training
    noise), against the clean image."""
    model.eval()
    errors = []
    for batch in images.split(batch_size):
        x = to_input(batch)
        errors.append(reconstruction_errors(model(model.corrupt(x)), x)[0])
    return torch.cat(errors)


def empty_tiles(codes, axis):
    """Of a grid of tiles centred on axis[0] x axis[1] (z2 flipped, growing upwards, as the decoded
    grid is drawn), those with none of the 2-d codes in them or in a tile beside them (a sparse cloud
    leaves chance gaps): an (n, n) bool tensor, row by row. Codes outside the grid count for no tile."""
    def tile_index(values, centres):
        bounds = (centres[1:] + centres[:-1]) / 2
        low, high = 2 * centres[0] - bounds[0], 2 * centres[-1] - bounds[-1]
        return torch.searchsorted(bounds.contiguous(), values.contiguous()), (values >= low) & (values <= high)
    n = len(axis[0])
    (columns, in_x), (rows, in_y) = tile_index(codes[:, 0], axis[0]), tile_index(codes[:, 1], axis[1])
    inside = torch.zeros(n, n)
    inside[n - 1 - rows[in_x & in_y], columns[in_x & in_y]] = 1
    near = torch.nn.functional.max_pool2d(inside[None, None], 3, stride=1, padding=1)[0, 0]
    return near == 0
