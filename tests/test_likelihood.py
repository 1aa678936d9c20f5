"""The VAE's nats: likelihoods that sum or integrate to one, an importance-sampled -log p(x) that
approaches the exact value, binarized data, and a valid loss that is the ELBO."""
import json
import math

import pytest
import torch

import analysis
import predict
from config import make_config
from data_loader import binarize_once, to_input
from helpers import TINY, train_in_process
from distributions import gaussian_kl
from model import build_model
from trainer import Trainer, build_optimizer, run_epoch
from utils import EVAL_SEED, run_cli


def tiny_vae(likelihood, n_pixels=2, btl_size=2, seed=0):
    torch.manual_seed(seed)
    config = make_config(model='vae', hidden_sizes=[4], btl_size=btl_size, use_dropout=True, dropout_p=0.,
                         likelihood=likelihood, image_shape=[1, 1, n_pixels])
    return build_model(config).eval()


def test_the_bernoulli_likelihood_sums_to_one_over_every_binary_image():
    model = tiny_vae('bernoulli')
    logits = torch.tensor([[-3., .2], [0., 7.], [1e-4, -1e-4]])
    images = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
    for row in logits:
        total = model.log_likelihood(row.expand(4, 2), images).exp().sum()
        assert total.item() == pytest.approx(1., abs=1e-6)


@pytest.mark.parametrize('n_pixels', [2, 13, 784, 3 * 64 * 64])  # 13: a prime, one pixel per product
def test_the_bernoulli_log_likelihood_is_x_l_minus_softplus_l_at_any_size(n_pixels):
    """Against the same sum in float64, for binary and grayscale x and logits up to +-60, where a
    sigmoid is 1 in fp32. Bound: the fp32 rounding of each term (x l, max(l, 0), the log of a
    sigmoid), at most 2^-24 of |l| + 1 each, accumulated over the pixels in the worst order."""
    model = tiny_vae('bernoulli', n_pixels=n_pixels)
    generator = torch.Generator().manual_seed(n_pixels)
    logits = torch.randn(5, n_pixels, generator=generator) * 20
    logits[0, 0] = 60.
    x = torch.cat([torch.rand(2, n_pixels, generator=generator), torch.rand(3, n_pixels, generator=generator).round()])
    exact = (x.double() * logits.double() - torch.nn.functional.softplus(logits.double())).sum(1)
    bound = n_pixels * 2 ** -24 * (3 * logits.abs().double().sum(1) + n_pixels)
    assert ((model.log_likelihood(logits, x).double() - exact).abs() <= bound).all()


def test_the_continuous_bernoulli_integrates_to_one_over_the_unit_square():
    """A midpoint sum over an n x n grid of [0, 1]^2. Each pixel's density is C exp(eta x) for
    logit eta, whose second derivative is eta^2 times itself: the midpoint rule's error per
    dimension is at most h^2 / 24 eta^2 max(density), which bounds the tolerance."""
    model = tiny_vae('cbernoulli')
    n = 400
    h = 1. / n
    grid = (torch.arange(n, dtype=torch.float64) + .5) * h
    x = torch.cartesian_prod(grid, grid).float()
    for logits in ([-4., 2.5], [1e-4, -3e-3], [0., 4.]):  # near 0: torch's Taylor series of the normaliser
        log_p = model.log_likelihood(torch.tensor(logits).expand(len(x), 2), x).double()
        integral = log_p.exp().sum() * h * h
        eta = max(abs(v) for v in logits)
        bound = 2 * h ** 2 / 24 * eta ** 2 * log_p.exp().max().item() + 1e-5  # two dimensions, fp32 sums
        assert integral.item() == pytest.approx(1., abs=bound)


@pytest.mark.parametrize('max_rows', [analysis.MAX_DECODED_ROWS['cpu'], 1000])
def test_the_importance_sampled_nll_approaches_the_exact_one_of_a_2d_code(max_rows, monkeypatch):
    """log p(x) of a VAE with a 2-d code and three binary pixels, exactly: the integral of
    p(x|z) N(z; 0, I) over a fine grid. The IWAE estimate with K samples must fall within its own
    statistical error of it; max_rows 1000 makes variational_bounds split each image's samples
    into chunks."""
    monkeypatch.setitem(analysis.MAX_DECODED_ROWS, 'cpu', max_rows)
    model = tiny_vae('bernoulli', n_pixels=3)
    images = torch.tensor([[0, 255, 255], [255, 0, 0]], dtype=torch.uint8).view(2, 1, 1, 3)
    x = to_input(images)
    side = torch.linspace(-8, 8, 801, dtype=torch.float64)
    step = (side[1] - side[0]).item()
    z = torch.cartesian_prod(side, side)
    with torch.no_grad():
        logits = model.decoder(z.float())
        log_prior = (-.5 * z.pow(2).sum(1) - math.log(2 * math.pi))
        exact = [torch.logsumexp(model.log_likelihood(logits, xi.expand_as(logits)).double() + log_prior, 0).item()
                 + 2 * math.log(step) for xi in x]

    n_samples = 50000  # an untrained encoder is a poor proposal: many samples keep the error small
    torch.manual_seed(1)
    neg_elbo, neg_iwae = analysis.variational_bounds(model, images, n_samples)
    with torch.no_grad():
        log_w = model.log_importance_weights(x, n_samples).double()
    w = (log_w - log_w.max(0).values).exp()
    relative_variance = (w.var(0) / w.mean(0) ** 2).numpy()  # of the weights, per image
    for i in range(2):
        error = math.sqrt(relative_variance[i] / n_samples)  # standard error of log mean w (delta method)
        assert -neg_iwae[i].item() == pytest.approx(exact[i], abs=5 * error + relative_variance[i] / n_samples)
        assert -neg_elbo[i].item() <= exact[i]


def test_binarize_once_draws_each_pixel_from_its_intensity_the_same_way_every_time():
    images = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).repeat(5000, 1).view(5000, 1, 2, 2)
    binary = binarize_once(images)
    assert set(binary.unique().tolist()) <= {0, 255}
    assert torch.equal(binary, binarize_once(images)) and not torch.equal(binary, binarize_once(images, seed=1))
    share_on = (binary == 255).double().mean(0).flatten()
    p = torch.tensor([0, 51, 128, 255]) / 255
    assert (share_on - p).abs().max() <= 5 * math.sqrt(.25 / 5000)  # 5 binomial standard deviations at most
    # Some images alone (train.py's valid images), across chunks and in any order: the draws they get with all.
    some = torch.tensor([4999, 3, 4095, 17, 4096])
    assert torch.equal(binarize_once(images, indices=some), binary[some])


def test_training_batches_are_binarized_afresh_and_validation_takes_its_images_as_given():
    model = tiny_vae('bernoulli', n_pixels=4).train()
    seen = []

    def recording_loss(x):
        seen.append(x.clone())
        return model.loss(x)

    images = torch.full((8, 1, 1, 4), 100, dtype=torch.uint8)
    for _ in range(2):
        run_epoch(model, images, 8, optimizer=build_optimizer(model, make_config().training)[0], loss_fn=recording_loss,
                  binarize=True)
    assert all(set(x.unique().tolist()) <= {0., 1.} for x in seen) and not torch.equal(seen[0], seen[1])
    valid = run_epoch(model, images, 8, loss_fn=recording_loss)  # evaluation: no binarize
    assert valid is not None and torch.equal(seen[-1], to_input(images))


def test_the_vae_valid_loss_is_the_sampled_elbo_the_same_draws_every_epoch():
    """With the weights frozen (lr 0), every epoch's valid loss is the same number: the negative
    ELBO with one z drawn per image from the validation seed, not the reconstruction at z = mu."""
    model = tiny_vae('bernoulli', n_pixels=6)
    optimizer, _ = build_optimizer(model, make_config(lr=0.).training)
    images = torch.randint(0, 256, (40, 1, 1, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(model, optimizer, verbose=0)
    trainer.train(images, torch.arange(30), torch.arange(30, 40), 3, 10)
    valid = [h['valid_loss'] for h in trainer.history]
    assert valid[0] == valid[1] == valid[2]
    x = to_input(images[30:])
    with torch.no_grad():
        torch.manual_seed(EVAL_SEED)
        sampled = model.eval().loss(x)[0].item()
        mu, logvar = model.posterior(x)
        at_mu = (-model.log_likelihood(model.decoder(mu), x) + gaussian_kl(mu, logvar).sum(1)).mean().item()
    assert valid[0] == pytest.approx(sampled, rel=1e-6) and valid[0] != pytest.approx(at_mu, rel=1e-3)


@pytest.mark.parametrize('flags, nats', [(['--binarize'], True), (['--likelihood', 'cbernoulli'], True), ([], False)])
def test_predict_names_the_nats_for_what_they_are(flags, nats, data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'vae.pth')
    checkpoint = train_in_process('--model_fn', model_fn, '--data_dir', data_dir, '--model', 'vae', '--btl_size', '2',
                                  *TINY, *flags)
    assert checkpoint['config'].data.binarize == ('--binarize' in flags)
    out_dir = tmp_path / 'predict'
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--out_dir', str(out_dir), '--what',
                                  'metrics', 'recon', '--iw_samples', '20']), 'predict.py')
    out = capsys.readouterr().out
    metrics = json.loads((out_dir / 'metrics.json').read_text())
    iwae = 'iwae_nll' if nats else 'iwae_cross_entropy'  # nll only where it is nats of -log p(x)
    assert metrics['nats_of_log_px'] is nats and metrics[iwae] <= metrics['neg_elbo']
    assert metrics[iwae + '_std_error'] > 0 and not {'iwae_nll', 'iwae_cross_entropy'} - {iwae} & metrics.keys()
    assert ('-log p(x), IWAE bound' in out) is nats and ('cross-entropy, IWAE bound' in out) is not nats
