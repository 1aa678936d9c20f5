"""The numbers behind predict.py, each computed in batches over a whole data set: codes,
per-image errors, kNN, ROC AUC, a PCA baseline and the importance-weighted bound."""
import math

import torch
import torch.nn.functional as F

from data_loader import to_input

EPS = 1e-6  # keeps BCE finite for outputs at (or, for an MSE model, beyond) 0 and 1


@torch.no_grad()
def encode_all(model, images, batch_size=1024):
    """Codes of all images (uint8, on the model's device), in eval mode."""
    model.eval()
    return torch.cat([model.encode(to_input(batch)) for batch in images.split(batch_size)])
    # |z| = (n_images, btl_size)


def reconstruction_errors(x_hat, x):
    """Per image: the sum of squared errors and the Bernoulli cross-entropy, both summed over
    pixels, whatever loss the model was trained with."""
    sse = (x_hat - x).pow(2).sum(1)
    bce = F.binary_cross_entropy(x_hat.clamp(EPS, 1 - EPS), x, reduction='none').sum(1)
    return sse, bce


@torch.no_grad()
def image_scores(model, images, batch_size=1024):
    """Per-image tensors: the model's loss and its parts, and the sse and bce of its
    reconstruction."""
    model.eval()
    scores = {}
    for batch in images.split(batch_size):
        x = to_input(batch)
        loss, parts = model.image_losses(x)
        sse, bce = reconstruction_errors(model(x), x)
        for name, value in {'loss': loss, **parts, 'sse': sse, 'bce': bce}.items():
            scores.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in scores.items()}


def knn_predict(train_codes, train_labels, query_codes, k=5, chunk=1024):
    """Majority label of the k nearest training codes (Euclidean) of each query code; a tie
    goes to the smallest label."""
    predictions = []
    for query in query_codes.split(chunk):
        nearest = torch.cdist(query, train_codes).topk(k, largest=False).indices
        predictions.append(torch.mode(train_labels[nearest], dim=1).values)
    return torch.cat(predictions)


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


class PCA:
    """Principal components of a data set, computed with torch in float64."""

    def __init__(self, x, n_components):
        x = x.double()
        self.mean = x.mean(0)
        centered = x - self.mean
        _, eigenvectors = torch.linalg.eigh(centered.T @ centered / len(x))
        # eigh sorts ascending: the last columns are the top components.
        self.components = eigenvectors[:, -n_components:].flip(1).T
        # |components| = (n_components, n_features)

    def encode(self, x):
        return ((x.double() - self.mean) @ self.components.T).to(x.dtype)

    def decode(self, z):
        return (z.double() @ self.components + self.mean).to(z.dtype)


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


@torch.no_grad()
def variational_bounds(model, images, n_samples, batch_size=None):
    """Per image, from the same n_samples draws of q(z|x): the ELBO estimate (mean of the
    log weights) and the importance-weighted bound (their log-mean-exp), both negated, in
    nats. By Jensen's inequality the second is never above the first."""
    model.eval()
    batch_size = batch_size or max(1, 32768 // n_samples)  # decodes n_samples x batch_size rows at once
    neg_elbo, neg_iwae = [], []
    for batch in images.split(batch_size):
        log_w = model.log_importance_weights(to_input(batch), n_samples)
        # |log_w| = (n_samples, batch_size)
        neg_elbo.append(-log_w.mean(0))
        neg_iwae.append(math.log(n_samples) - torch.logsumexp(log_w, 0))
    return torch.cat(neg_elbo), torch.cat(neg_iwae)


def active_units(mu, threshold=.01):
    """Latent dimensions whose posterior mean varies across the data: Cov_x(E_q[z_u]) > 0.01
    (Burda et al., 2016)."""
    return int((mu.var(0) > threshold).sum())


def fit_gaussian(codes):
    """A full-covariance Gaussian fitted to codes, to sample an AutoEncoder's code space."""
    mean = codes.mean(0)
    cov = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    cov = cov + 1e-6 * torch.eye(len(mean), device=codes.device)  # stays positive definite
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def central_box(codes, share=.99, margin=.05):
    """The box (low, high) per dimension that holds the central share of the codes, widened by
    margin of its size on each side: a few outlying codes do not shrink the picture of the rest."""
    tail = (1 - share) / 2
    low, high = torch.quantile(codes.float(), torch.tensor([tail, 1 - tail], device=codes.device), dim=0)
    # |low| = |high| = (btl_size,)
    pad = margin * (high - low)
    return low - pad, high + pad
