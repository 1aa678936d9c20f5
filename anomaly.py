"""Anomaly scores: for each test image a number that is higher the less the image is like the
training images. Each score is one line of SCORES (a baseline that needs no model, one line of
BASELINES), computed from an analysis.Evaluation; oneclass.py and predict.py's anomaly figure and
ROC AUC read the same registry."""
from typing import Callable, NamedTuple

import torch

import analysis
from data_loader import to_input
from utils import CliError

CODE_KNN_K = 5
# feature_gauss: the share of the features' mean variance added to each variance. Of 0.01 to 3, it
# gives the held-out normal images the highest likelihood, for every class of the one-class recipe.
FEATURE_RIDGE = .01
# feature_gauss: the widest hidden layer whose covariance it fits (8,192 features: 512 MB in float64).
MAX_FEATURE_WIDTH = 8192


class Score(NamedTuple):
    description: str
    needs_vae: bool
    compute: Callable[[analysis.Evaluation], torch.Tensor]
    needs_train_images: bool = False  # compares with the training images (their codes, features, pixels)


SCORES = {
    'recon': Score('reconstruction error, in the image-space loss the model was trained with', False,
                   lambda s: s.losses['recon']),
    'neg_elbo': Score('negative ELBO (nats only for binary pixels or a density of the pixels)', True,
                      lambda s: s.bounds.neg_elbo),
    'iwae': Score('importance-weighted bound on -log p(x) (nats only for binary pixels or a density of the pixels)',
                  True, lambda s: s.bounds.neg_iwae),
    'code_gauss': Score('-log density of the code under a Gaussian fitted to the training codes', False,
                        lambda s: analysis.gaussian_nll(*s.codes), True),
    'code_knn': Score(f'mean distance to the {CODE_KNN_K} nearest training codes', False,
                      lambda s: analysis.knn_distance(*s.codes, CODE_KNN_K), True),
    'feature_gauss': Score("-log density of the encoder's last hidden features under a Gaussian fitted to the "
                           "training images' features", False,
                           lambda s: analysis.gaussian_nll(*fitted_features(s), FEATURE_RIDGE), True),
}
BASELINES = {
    'pca_recon': Score('squared error of the reconstruction by PCA with as many components as the code', False,
                       lambda s: analysis.pca_baseline(s.train_images, s.test_images, s.model.btl_size)['sse'],
                       True),
    'pixel_knn': Score('distance to the nearest training image in pixel space', False,
                       lambda s: analysis.knn_distance(to_input(s.train_images), to_input(s.test_images), 1), True),
}


def fitted_features(evaluation):
    """The encoder's last hidden features of the training and test images, for feature_gauss: a layer too
    wide for the covariance of its features to be fitted is refused in one line."""
    width = evaluation.model.hidden_features(to_input(evaluation.train_images[:1])).shape[1]
    if width > MAX_FEATURE_WIDTH:
        raise CliError(f'--scores feature_gauss: the encoder\'s last hidden layer has {width:,} features, more '
                       f'than the {MAX_FEATURE_WIDTH:,} whose covariance it fits; choose other --scores or a '
                       f'smaller --image_size (the trained checkpoints are kept)')
    return evaluation.features


@torch.no_grad()
def compute_score(evaluation, name):
    """The per-image scores of the evaluation's test images under SCORES[name] or BASELINES[name]."""
    return {**SCORES, **BASELINES}[name].compute(evaluation)


def scores_of(model):
    """The scores that this model can give."""
    return [name for name, score in SCORES.items() if model.has_prior or not score.needs_vae]
