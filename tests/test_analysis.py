"""The numbers of predict.py on cases with known answers."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import analysis
from config import make_config
from model import build_model


def brute_force_auc(scores, positive):
    pairs = [(p, n) for p, n in itertools.product(scores[positive], scores[~positive])]
    return sum(1. if p > n else .5 if p == n else 0. for p, n in pairs) / len(pairs)


def test_roc_auc_known_answers():
    positive = torch.tensor([False, False, True, True])
    assert analysis.roc_auc(torch.tensor([.1, .2, .8, .9]), positive) == 1.
    assert analysis.roc_auc(torch.tensor([.9, .8, .2, .1]), positive) == 0.
    assert analysis.roc_auc(torch.ones(4), positive) == .5
    assert analysis.roc_auc(torch.tensor([.1, .4, .35, .8]), positive) == .75


def test_roc_auc_matches_pair_counting_with_ties():
    torch.manual_seed(0)
    scores = torch.randint(0, 6, (40,)).float()  # many ties
    positive = torch.rand(40) < .3
    assert analysis.roc_auc(scores, positive) == pytest.approx(brute_force_auc(scores, positive))
    with pytest.raises(ValueError):
        analysis.roc_auc(scores, torch.zeros(40, dtype=torch.bool))


def test_knn_predict_majority_of_nearest():
    train = torch.tensor([[0.], [.1], [.2], [5.], [5.1], [5.2], [.3]])
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 0])
    assert analysis.knn_predict(train, labels, torch.tensor([[.05], [5.05]]), k=3).tolist() == [0, 2]


def test_leave_one_out_accuracy_leaves_each_code_out_of_its_own_neighbours():
    # pairs of near codes of opposite labels: each code's nearest other code has the other label
    codes, labels = torch.tensor([[0.], [1.], [10.], [11.]]), torch.tensor([0, 1, 0, 1])
    assert analysis.knn_predict(codes, labels, codes, k=1).tolist() == labels.tolist()  # itself
    assert analysis.leave_one_out_accuracy(codes, labels, k=1) == 0.
    assert analysis.leave_one_out_accuracy(codes, labels, k=1, max_queries=2) == 0.
    # against a direct computation, across chunks
    torch.manual_seed(0)
    codes, labels = torch.randn(300, 2), torch.randint(0, 3, (300,))
    codes[:150] += 2 * labels[:150, None]  # half the codes sit by label
    distances = torch.cdist(codes, codes).fill_diagonal_(float('inf'))
    direct = torch.mode(labels[distances.topk(5, largest=False).indices], 1).values
    expected = (direct == labels).float().mean().item()
    assert analysis.leave_one_out_accuracy(codes, labels, k=5) == pytest.approx(expected)
    rows = torch.randperm(300)[:100]  # some of the training codes as queries, in chunks of 7
    assert torch.equal(analysis.knn_predict(codes, labels, codes[rows], 5, chunk=7, query_rows=rows), direct[rows])


def test_pca_matches_svd_and_reconstructs_exactly_with_all_components():
    torch.manual_seed(0)
    x = torch.randn(200, 6) @ torch.randn(6, 6)
    pca = analysis.PCA(x, 2)
    centered = (x - x.mean(0)).double()
    top = torch.linalg.svd(centered, full_matrices=False).Vh[:2]
    assert torch.allclose((pca.components * top).sum(1).abs(), torch.ones(2, dtype=torch.float64), atol=1e-8)
    full = analysis.PCA(x, 6)
    assert torch.allclose(full.decode(full.encode(x)), x, atol=1e-4)


@pytest.mark.parametrize('shape', [(200, 6), (12, 50)])
def test_pca_from_the_smaller_gram_matrix_agrees_with_the_covariance_method(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * torch.linspace(3, .1, shape[1], dtype=torch.float64)
    _, eigenvectors = torch.linalg.eigh(torch.cov(x.T))
    expected = eigenvectors[:, -3:].flip(1).T  # the covariance method, ascending order reversed
    got = analysis.PCA(x, 3).components
    assert torch.allclose((got * expected).sum(1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(got.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_pca_past_the_exact_size_fits_randomly_and_still_finds_the_leading_directions(monkeypatch):
    monkeypatch.setattr(analysis, 'EXACT_PCA_MAX_SIDE', 10)
    torch.manual_seed(0)
    x = torch.randn(300, 40, dtype=torch.float64) * torch.linspace(5, .1, 40, dtype=torch.float64)
    expected = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:4]
    got = analysis.PCA(x, 4).components
    # a spectrum this spread (5 down to 0.1 by equal steps) leaves the randomized fit within 1e-6
    assert torch.allclose((got * expected).sum(1).abs(), torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_reconstruction_errors_per_image():
    x = torch.tensor([[0., 1.], [1., 1.]])
    x_hat = torch.tensor([[.5, 1.], [1., .5]])
    sse, bce = analysis.reconstruction_errors(x_hat, x)
    assert torch.allclose(sse, torch.tensor([.25, .25]))
    assert torch.allclose(bce, torch.tensor([math.log(2), math.log(2)]), atol=1e-4)


def test_active_units_counts_dimensions_that_vary():
    mu = torch.zeros(100, 4)
    mu[:, 0] = torch.linspace(-1, 1, 100)
    mu[:, 2] = torch.linspace(-.5, .5, 100)
    mu[:, 3] = torch.linspace(-.01, .01, 100)  # varies, but below the threshold
    assert analysis.active_units(mu) == 2


def tiny_vae():
    torch.manual_seed(0)
    return build_model(make_config(model='vae', hidden_sizes=[5], btl_size=2, image_shape=[1, 1, 6])).eval()


def test_iwae_is_exact_when_the_posterior_is_the_prior_and_the_decoder_ignores_z():
    model = tiny_vae()
    with torch.no_grad():
        head, out = model.encoder[-1], model.decoder[-1]
        head.weight.zero_(), head.bias.zero_()  # q(z|x) = N(0, I) = p(z)
        out.weight.zero_()  # logits = bias whatever z: p(x) = p(x|z)
        out.bias.copy_(torch.linspace(-2, 2, 6))
    images = torch.randint(0, 256, (4, 6), dtype=torch.uint8)
    neg_elbo, neg_iwae = analysis.variational_bounds(model, images, n_samples=7)
    x = images.float() / 255
    expected = F.binary_cross_entropy_with_logits(out.bias.expand(4, 6), x, reduction='none').sum(1)
    assert torch.allclose(neg_iwae, expected, atol=1e-4)
    assert torch.allclose(neg_elbo, expected, atol=1e-4)


def test_iwae_bound_is_at_least_the_elbo():
    model = tiny_vae()
    images = torch.randint(0, 256, (20, 6), dtype=torch.uint8)
    neg_elbo, neg_iwae = analysis.variational_bounds(model, images, n_samples=50)
    assert (neg_iwae <= neg_elbo + 1e-5).all()  # log p(x) >= IWAE bound >= ELBO
    torch.manual_seed(1)
    neg_elbo_1, neg_iwae_1 = analysis.variational_bounds(model, images, n_samples=1)
    assert torch.allclose(neg_elbo_1, neg_iwae_1)  # one sample: the two coincide


def test_fit_gaussian_recovers_mean_and_covariance():
    torch.manual_seed(0)
    codes = torch.randn(20000, 2) @ torch.tensor([[2., 0.], [1., .5]]) + torch.tensor([3., -1.])
    gaussian = analysis.fit_gaussian(codes)
    assert torch.allclose(gaussian.mean, torch.tensor([3., -1.]), atol=.05)
    assert torch.allclose(gaussian.covariance_matrix, torch.tensor([[5., .5], [.5, .25]]), atol=.1)  # A^T A


def test_a_ridge_adds_its_share_of_the_mean_variance_to_every_variance():
    torch.manual_seed(0)
    codes = torch.randn(50, 200).double()  # more dimensions than codes: the covariance alone is singular
    plain, ridged = analysis.fit_gaussian(codes).covariance_matrix, analysis.fit_gaussian(codes, .5).covariance_matrix
    assert torch.allclose(ridged - plain, .5 * torch.cov(codes.T).diagonal().mean() * torch.eye(200).double())
    assert torch.isfinite(analysis.gaussian_nll(codes, torch.randn(3, 200), .5)).all()


def test_the_code_box_holds_the_central_codes_and_ignores_outliers():
    codes = torch.cat([torch.linspace(0, 1, 1001)[:, None].expand(-1, 2), torch.tensor([[1000., -1000.]])])
    low, high = analysis.central_box(codes, share=.99, margin=0.)
    # the 0.5% and 99.5% quantiles of 0..1, moved a hair by the outlier in each dimension
    assert torch.allclose(low, torch.tensor([.005, .004]), atol=1e-4)
    assert torch.allclose(high, torch.tensor([.996, .995]), atol=1e-4)
    wider_low, wider_high = analysis.central_box(codes, share=.99, margin=.1)
    assert torch.allclose(wider_low, low - .1 * (high - low)) and torch.allclose(wider_high, high + .1 * (high - low))


def test_the_empty_tiles_of_a_grid_are_those_with_no_code_in_or_beside_them():
    axis = [torch.arange(5.)] * 2  # tiles centred on 0..4; z2 grows upwards, so row 0 is z2 = 4
    codes = torch.tensor([[0.1, 0.2], [0.4, -0.3], [9., 9.], [-7., 2.]])  # two in tile (0, 0); two off the grid
    empty = analysis.empty_tiles(codes, axis)
    # the tile of z1 = 0, z2 = 0 is the bottom left one; it and the tiles beside it are not empty
    expected = torch.ones(5, 5, dtype=torch.bool)
    expected[3:, :2] = False
    assert torch.equal(empty, expected)
