"""Anomaly scores: for each test image a number that is higher the less the image is like the
training images. Each score is one line of SCORES (a baseline that needs no model, one line of
BASELINES); oneclass.py and predict.py's anomaly figure and ROC AUC read the same registry."""
from functools import cached_property
from typing import Callable, NamedTuple

import torch

import analysis
from data_loader import to_input
from utils import EVAL_BATCH_SIZE, CliError

CODE_KNN_K = 5
# feature_gauss: the share of the features' mean variance added to each variance. Of 0.01 to 3, it
# gives the held-out normal images the highest likelihood, for every class of the one-class recipe.
FEATURE_RIDGE = .01
# feature_gauss: the widest hidden layer whose covariance it fits (8,192 features: 512 MB in float64).
MAX_FEATURE_WIDTH = 8192


class Scorer:
    """The evaluation of one model on its test images and training images (uint8, on the model's
    device): every per-image quantity computed once, when a score or a figure first needs it: the
    model's own losses, its variational bounds, its codes and its last hidden features. predict.py
    and oneclass.py read them here. The training images are loaded by load_train_images only for what
    compares with them, so that what needs the model alone works on a data set of test images only."""

    def __init__(self, model, load_train_images, test_images, iw_samples=analysis.IW_SAMPLES,
                 batch_size=EVAL_BATCH_SIZE):
        self.model, self.load_train_images, self.test_images = model, load_train_images, test_images
        self.iw_samples, self.batch_size = iw_samples, batch_size

    @cached_property
    def train_images(self):
        return self.load_train_images()

    @cached_property
    def losses(self):
        """Per test image: the model's loss and its parts, sse and bce (analysis.image_scores)."""
        return analysis.image_scores(self.model, self.test_images, self.batch_size)

    @cached_property
    def bounds(self):
        """Per test image: the negative ELBO and the importance-weighted -log p(x) bound (analysis.Bounds)."""
        return analysis.Bounds(*analysis.variational_bounds(self.model, self.test_images, self.iw_samples,
                                                            progress=True), self.iw_samples)

    @cached_property
    def train_codes(self):
        return analysis.encode_all(self.model, self.train_images, self.batch_size)

    @cached_property
    def test_codes(self):
        return analysis.encode_all(self.model, self.test_images, self.batch_size)

    @property
    def codes(self):
        return self.train_codes, self.test_codes

    @cached_property
    def features(self):
        width = self.model.hidden_features(to_input(self.train_images[:1])).shape[1]
        if width > MAX_FEATURE_WIDTH:
            raise CliError(f'--scores feature_gauss: the encoder\'s last hidden layer has {width:,} features, more '
                           f'than the {MAX_FEATURE_WIDTH:,} whose covariance it fits; choose other --scores or a '
                           f'smaller --image_size (the trained checkpoints are kept)')
        return tuple(analysis.encode_all(self.model, images, features=True)
                     for images in (self.train_images, self.test_images))

    @torch.no_grad()
    def score(self, name):
        """The per-image scores of the test images under SCORES[name] or BASELINES[name]."""
        return {**SCORES, **BASELINES}[name].compute(self)


class Score(NamedTuple):
    description: str
    needs_vae: bool
    compute: Callable[[Scorer], torch.Tensor]
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
                           lambda s: analysis.gaussian_nll(*s.features, FEATURE_RIDGE), True),
}
BASELINES = {
    'pca_recon': Score('squared error of the reconstruction by PCA with as many components as the code', False,
                       lambda s: analysis.pca_baseline(s.train_images, s.test_images, s.model.btl_size)['sse'],
                       True),
    'pixel_knn': Score('distance to the nearest training image in pixel space', False,
                       lambda s: analysis.knn_distance(to_input(s.train_images), to_input(s.test_images), 1), True),
}


def scores_of(model):
    """The scores that this model can give."""
    return [name for name, score in SCORES.items() if model.has_prior or not score.needs_vae]
