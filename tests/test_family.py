"""The autoencoder family: each variant trained through train.py's command line on tiny data
and reloaded by predict.py from its config alone."""
import json
import math
import os

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import predict
import flags
import train
from config import RunConfig, make_config
from data_loader import write_idx
from helpers import assert_same_run, is_share_of, iw_samples_flag
from checkpoint import load_checkpoint, model_from_checkpoint, upgrade_state_dict, upgraded
from model import build_model
from utils import run_cli

SMALL = ['--n_epochs', '2', '--batch_size', '64', '--gpu_id', '-1', '--btl_size', '3']
VARIANTS = {
    'denoising_gaussian': ['--noise', 'gaussian', '--noise_level', '.3', '--hidden_sizes', '64'],
    'denoising_masking': ['--noise', 'masking', '--noise_level', '.5', '--hidden_sizes', '64'],
    'denoising_salt_pepper': ['--noise', 'salt_pepper', '--noise_level', '.2', '--hidden_sizes', '64'],
    'denoising_vae': ['--model', 'vae', '--noise', 'masking', '--hidden_sizes', '64'],
    'sparse_l1': ['--l1', '.01', '--hidden_sizes', '64'],
    'sparse_kl': ['--sparsity', '.05', '--sparsity_weight', '.1', '--hidden_sizes', '64'],
    'tied': ['--tied', '--hidden_sizes', '64', '32'],
    'tied_vae': ['--model', 'vae', '--tied', '--hidden_sizes', '64'],
    'leaky_relu': ['--activation', 'leaky_relu', '--hidden_sizes', '64'],
    'gelu': ['--activation', 'gelu', '--hidden_sizes', '64'],
    'tanh': ['--activation', 'tanh', '--hidden_sizes', '64'],
    'sigmoid': ['--activation', 'sigmoid', '--hidden_sizes', '64'],
    'linear': ['--activation', 'none', '--use_dropout', '--dropout_p', '0', '--hidden_sizes', '64'],
    'conv': ['--arch', 'conv', '--hidden_sizes', '4', '8'],
    'conv_vae': ['--arch', 'conv', '--model', 'vae', '--hidden_sizes', '4', '8', '8'],
    'lstm': ['--arch', 'lstm', '--hidden_sizes', '16'],
    'lstm_vae': ['--arch', 'lstm', '--model', 'vae', '--hidden_sizes', '16'],
    'beta_vae_warmup': ['--model', 'vae', '--kl_weight', '4', '--kl_anneal', '2', '--hidden_sizes', '64'],
    'overcomplete_denoising': ['--btl_size', '800', '--noise', 'gaussian', '--hidden_sizes', '32'],
    'bn_eps': ['--bn_eps', '1e-3', '--hidden_sizes', '64'],
    'conv_bn_eps': ['--arch', 'conv', '--bn_eps', '1e-3', '--hidden_sizes', '4'],
    'gated': ['--gated', '--hidden_sizes', '64'],
    'vamp_prior': ['--model', 'vae', '--prior', 'vamp', '--n_pseudo', '7', '--use_dropout', '--hidden_sizes', '64'],
    'iwae': ['--model', 'vae', '--iwae_k', '4', '--hidden_sizes', '64'],
    'binarized_gated_vamp_iwae': ['--model', 'vae', '--binarize', '--gated', '--prior', 'vamp', '--n_pseudo', '5',
                                  '--use_dropout', '--iwae_k', '3', '--hidden_sizes', '64', '32'],
    'continuous_bernoulli': ['--model', 'vae', '--likelihood', 'cbernoulli', '--hidden_sizes', '64'],
    'mixture_prior': ['--model', 'vae', '--prior', 'mog', '--n_components', '4', '--hidden_sizes', '64'],
    'gaussian_likelihood': ['--model', 'vae', '--likelihood', 'gaussian', '--hidden_sizes', '64'],
    'ae_gaussian_likelihood': ['--likelihood', 'gaussian', '--hidden_sizes', '64'],
}


def train_variant(folder, data_dir, flags):
    model_fn = str(folder / 'model.pth')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--data_dir', data_dir, '--overwrite', *SMALL, *flags]),
            'train.py')
    return model_fn


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_trains_and_reloads_in_predict(name, data_dir, tmp_path, capsys):
    model_fn = train_variant(tmp_path, data_dir, VARIANTS[name])
    checkpoint = load_checkpoint(model_fn)
    assert len(checkpoint['history']) == 2
    out_dir = tmp_path / 'predict'
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--out_dir', str(out_dir), '--gpu_id', '-1',
                                  *iw_samples_flag(model_fn, 3), '--what', 'recon', 'samples', 'metrics']),
            'predict.py')
    printed = capsys.readouterr().out
    metrics = json.loads((out_dir / 'metrics.json').read_text())
    own_loss = metrics['neg_elbo'] if '--model' in VARIANTS[name] else metrics.get('loss', metrics['recon'])
    assert np.isfinite(own_loss) and np.isfinite(metrics['sse_per_image'])
    sparse = '--l1' in VARIANTS[name] or '--sparsity' in VARIANTS[name]
    assert ('code_near_zero' in metrics) == sparse  # the share of near-zero codes only where it means something
    written = set(os.listdir(out_dir))
    assert {'reconstructions.png', 'samples.png'} <= written
    if '--noise' in VARIANTS[name]:
        assert 'denoising.png' in written and 'noisy_sse_per_image' in metrics
        assert 'the same from noisy inputs' in printed
    if sparse:
        assert 'code activations with |z| < 0.01' in printed
        assert is_share_of(metrics['code_near_zero'], metrics['n_test'] * checkpoint['config'].model.btl_size)
    if '--l1' in VARIANTS[name]:
        assert 'train_l1' in checkpoint['history'][0] and 'l1' in metrics and metrics['loss'] > metrics['recon']
    if '--sparsity' in VARIANTS[name]:
        assert 'train_sparsity' in checkpoint['history'][0] and 'sparsity' in metrics
        assert metrics['loss'] > metrics['recon']
    if '--bn_eps' in VARIANTS[name]:
        assert batch_norm_eps(build_model(checkpoint['config'])) == {1e-3}


def batch_norm_eps(model):
    return {m.eps for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))}


def test_bn_eps_caps_what_a_unit_silent_in_training_gives_in_eval_and_old_checkpoints_keep_theirs():
    # The config of a checkpoint saved before --bn_eps existed: the flags there were then.
    config = RunConfig.from_flags(upgraded(dict(model='ae', hidden_sizes=[1], n_layers=1, btl_size=1, use_dropout=False,
                                                dropout_p=.3, loss='mse', kl_weight=1.)))
    assert batch_norm_eps(build_model(config)) == {1e-5}
    for eps in (1e-5, 1e-3):
        block = build_model(config.replace(bn_eps=eps, image_shape=[1, 1, 1])).encoder[0]
        linear, _, batch_norm = block.block
        with torch.no_grad():
            linear.weight.fill_(1.), linear.bias.fill_(-1.)  # ReLU(x - 1): silent for every x <= 1
        batch_norm.momentum = None  # running statistics = the plain average over the training batches
        block.train()
        for _ in range(10):
            block(torch.rand(64, 1))
        block.eval()
        # An unusual input fires the unit: eval mode divides by sqrt(running var (~0) + eps).
        out = block(torch.tensor([[1.1]])).item()
        assert abs(out - .1 / eps ** .5) < .01 * .1 / eps ** .5


def parameter_count(capsys):
    summary = next(line for line in capsys.readouterr().out.splitlines() if ' parameters on ' in line)
    return int(summary.split()[1].replace(',', ''))


def test_tied_weights_drop_the_decoder_weights_from_the_count(data_dir, tmp_path, capsys):
    flags = ['--hidden_sizes', '64', '32', '--verbose', '1']
    train_variant(tmp_path, data_dir, flags)
    untied = parameter_count(capsys)
    train_variant(tmp_path, data_dir, flags + ['--tied'])
    tied = parameter_count(capsys)
    assert untied - tied == 784 * 64 + 64 * 32 + 32 * 3  # every decoder weight matrix, biases kept


def test_tied_decoder_uses_the_transposed_encoder_weights():
    config = make_config(hidden_sizes=[5], btl_size=2, tied=True)
    model = build_model(config.replace(image_shape=[1, 1, 7]))
    with torch.no_grad():
        model.encoder[-1].weight.fill_(2.)
    x = torch.randn(3, 2)
    first = model.decoder[0].block[0]
    assert torch.equal(first(x), x @ model.encoder[-1].weight + first.bias)


def test_noise_only_in_training_and_of_the_right_kind():
    config = make_config(hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0.)
    x = torch.full((200, 50), .5)
    masked = build_model(config.replace(noise='masking', noise_level=.3, image_shape=[1, 1, 50])).corrupt(x)
    assert abs((masked == 0).float().mean().item() - .3) < .03
    assert torch.allclose(masked.unique(), torch.tensor([0., .5 / .7]))  # kept pixels scaled by 1 / (1 - p)
    salted = build_model(config.replace(noise='salt_pepper', noise_level=.2, image_shape=[1, 1, 50])).corrupt(x)
    assert abs((salted != .5).float().mean().item() - .2) < .03 and set(salted.unique().tolist()) == {0., .5, 1.}
    gaussian = build_model(config.replace(noise='gaussian', noise_level=.1, image_shape=[1, 1, 50]))
    noisy = gaussian.corrupt(x)
    assert abs((noisy - x).std().item() - .1) < .01  # 5 standard deviations from 0 and 1: not clamped
    edges = gaussian.corrupt(torch.tensor([0., 1.]).repeat(5000))  # half of the noise would leave [0, 1]
    assert edges.min() == 0 and edges.max() == 1 and ((edges > 0) & (edges < 1)).float().mean() > .4
    gaussian.eval()
    assert torch.equal(gaussian.loss(x)[0], gaussian.loss(x)[0])  # clean input in eval: deterministic
    gaussian.train()
    assert not torch.equal(gaussian.loss(x)[0], gaussian.loss(x)[0])


def test_kl_warm_up_rises_linearly_from_its_first_step_in_training_and_validation_weighs_fully():
    config = make_config(model='vae', hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0., kl_weight=2.,
                         kl_anneal=4)
    model = build_model(config.replace(image_shape=[1, 1, 6]))
    x = torch.rand(8, 6)
    for epoch, ramp in ((1, .25), (2, .5), (3, .75), (4, 1.), (9, 1.)):
        model.set_epoch(epoch)
        torch.manual_seed(0)
        loss, parts = model.train().image_losses(x)
        assert torch.allclose(loss, parts['recon'] + 2. * ramp * parts['kl'])
        loss, parts = model.eval().image_losses(x)
        assert torch.allclose(loss, parts['recon'] + 2. * parts['kl'])


def test_gated_layers_multiply_a_linear_map_by_a_sigmoid_gate():
    config = make_config(hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0., gated=True)
    model = build_model(config.replace(image_shape=[1, 1, 6])).eval()
    x = torch.rand(4, 6)
    w, b = model.encoder[0].block[0].linear.weight, model.encoder[0].block[0].linear.bias
    (w1, w2), (b1, b2) = w.chunk(2), b.chunk(2)  # the value's and the gate's halves of the one Linear
    assert torch.allclose(model.encoder[0](x), (x @ w1.T + b1) * torch.sigmoid(x @ w2.T + b2))
    kinds = [type(m).__name__ for m in model.modules() if type(m).__name__ in ('GatedLinear', 'ReLU')]
    assert kinds == ['GatedLinear', 'GatedLinear']  # one per hidden layer, encoder and decoder, no activation


def test_a_gated_checkpoint_of_two_linears_per_layer_loads_into_the_fused_layer():
    config = make_config(model='vae', hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0., gated=True,
                         image_shape=[1, 1, 6])
    model = build_model(config).eval()
    split = {}  # the older layout: the halves as Linears 'h' and 'gate'
    for name, value in model.state_dict().items():
        if '.linear.' in name:
            for half, part in zip(('h', 'gate'), value.chunk(2)):
                split[name.replace('.linear.', f'.{half}.')] = part.clone()
        else:
            split[name] = value
    loaded = model_from_checkpoint({'config': config, 'model': split}, 'old.pth').eval()
    x = torch.rand(4, 6)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert upgrade_state_dict(model.state_dict()).keys() == model.state_dict().keys()


def vamp_vae(n_pseudo, btl_size=3, n_pixels=6):
    torch.manual_seed(0)
    config = make_config(model='vae', hidden_sizes=[5], btl_size=btl_size, use_dropout=True, dropout_p=0.,
                         prior='vamp', n_pseudo=n_pseudo)
    return build_model(config.replace(image_shape=[1, 1, n_pixels])).eval()


def test_the_vamp_prior_is_the_mean_of_the_posteriors_at_the_pseudo_inputs():
    model = vamp_vae(n_pseudo=4)
    z = torch.randn(10, 3) * 2
    with torch.no_grad():
        mu, logvar = model.posterior(model.prior.pseudo_inputs.clamp(0, 1))
        densities = torch.stack([Normal(m, torch.exp(.5 * v)).log_prob(z).sum(1).exp() for m, v in zip(mu, logvar)])
        assert torch.allclose(model.log_prior(z), densities.mean(0).log(), rtol=1e-5, atol=1e-5)
        samples = model.sample_prior(20000, 'cpu')
    # the mixture's samples have its mean and variance (law of total variance)
    mean, var = mu.mean(0), (logvar.exp() + mu.pow(2)).mean(0) - mu.mean(0).pow(2)
    assert torch.allclose(samples.mean(0), mean, atol=5 * (var / 20000).sqrt().max().item())
    assert torch.allclose(samples.var(0), var, rtol=.1)


def test_the_vamp_prior_of_a_1d_code_integrates_to_one():
    model = vamp_vae(n_pseudo=6, btl_size=1)
    z = torch.linspace(-30, 30, 60001).unsqueeze(1)
    with torch.no_grad():
        integral = model.log_prior(z).double().exp().sum() * (z[1] - z[0]).item()
    assert integral.item() == pytest.approx(1., abs=1e-3)


def test_the_vamp_kl_is_log_q_minus_log_p_at_the_drawn_code():
    model = vamp_vae(n_pseudo=3)
    x = torch.rand(5, 6)
    torch.manual_seed(2)
    loss, parts = model.image_losses(x)
    torch.manual_seed(2)
    mu, logvar = model.posterior(x)
    z = mu + torch.randn_like(mu) * torch.exp(.5 * logvar)
    expected = Normal(mu, torch.exp(.5 * logvar)).log_prob(z).sum(1) - model.log_prior(z)
    assert torch.allclose(parts['kl'], expected, atol=1e-5) and torch.allclose(loss, parts['recon'] + parts['kl'])


def test_iwae_training_minimises_the_importance_weighted_bound_and_validation_the_elbo():
    config = make_config(model='vae', hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0., iwae_k=6)
    model = build_model(config.replace(image_shape=[1, 1, 6])).train()
    x = torch.rand(4, 6)
    torch.manual_seed(3)
    loss, parts = model.image_losses(x)
    torch.manual_seed(3)
    log_w = model.log_importance_weights(x, 6)
    assert parts == {} and torch.allclose(loss, -(log_w.exp().mean(0)).log(), atol=1e-4)
    assert set(model.eval().image_losses(x)[1]) == {'recon', 'kl'}


def test_sparsity_penalty_is_the_kl_to_the_target_activation():
    config = make_config(hidden_sizes=[5], btl_size=2, use_dropout=True, dropout_p=0., sparsity=.1,
                         sparsity_weight=3.)
    model = build_model(config.replace(image_shape=[1, 1, 6])).eval()
    x = torch.rand(8, 6)
    z = model.encode(x)
    assert ((0 < z) & (z < 1)).all()  # the sigmoid makes a mean activation a probability
    rho_hat = z.mean(0)
    expected = 3. * (.1 * torch.log(.1 / rho_hat) + .9 * torch.log(.9 / (1 - rho_hat))).sum()
    _, parts = model.image_losses(x)
    assert torch.allclose(parts['sparsity'], expected.expand(8))


def low_rank_images(n, rank, seed):
    """Images near a rank-`rank` affine subspace: a mean image plus `rank` patterns with
    random weights of falling scale, plus a little noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(-.5, .5, size=(rank, 784))
    weights = rng.normal(size=(n, rank)) * np.array([40., 30., 20.][:rank])  # stays inside 0..255: no clipping
    images = 128 + weights @ patterns + rng.normal(scale=1, size=(n, 784))
    return np.clip(images, 0, 255).reshape(n, 28, 28)


def test_linear_autoencoder_learns_the_pca_subspace(tmp_path):
    k = 3
    images = low_rank_images(600, k, seed=0)
    write_idx(str(tmp_path / 'train-images-idx3-ubyte'), images)
    write_idx(str(tmp_path / 'train-labels-idx1-ubyte'), np.zeros(600))
    model_fn = str(tmp_path / 'linear.pth')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--data_dir', str(tmp_path), '--gpu_id', '-1',
                                '--verbose', '0', '--activation', 'none', '--use_dropout', '--dropout_p', '0',
                                '--hidden_sizes', '32', '--btl_size', str(k), '--n_epochs', '150', '--lr', '3e-3',
                                '--batch_size', '32']), 'train.py')
    checkpoint = load_checkpoint(model_fn)
    model = build_model(checkpoint['config'])
    model.load_state_dict(checkpoint['model'])
    model.eval()
    with torch.no_grad():  # the decoder is affine: its columns are decode(e_i) - decode(0)
        columns = (model.decode(torch.eye(k)) - model.decode(torch.zeros(1, k))).T.double()
    x = torch.tensor(images.reshape(600, -1), dtype=torch.float64) / 255
    top = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:k].T
    cosines = torch.linalg.svdvals(torch.linalg.qr(columns).Q.T @ top)
    assert cosines.min() > .99  # every principal angle below about 8 degrees


@pytest.mark.parametrize('part_flags, help_text, label', [
    (['--prior', 'mog', '--n_components', '3'], 'mog: a mixture of --n_components Gaussians',
     'decoded from z ~ p(z), a mixture of learned Gaussians'),
    (['--likelihood', 'gaussian'], 'gaussian: a Gaussian per pixel with a standard deviation learned',
     'Gaussian of pixel intensities with a learned deviation per pixel, a density on the real line'),
])
def test_a_new_part_is_in_the_help_trains_resumes_and_is_named_by_predict(part_flags, help_text, label, data_dir,
                                                                         tmp_path, capsys):
    assert help_text in ' '.join(flags.define_argparser().format_help().split())
    model_fn = str(tmp_path / 'm.pth')
    common = ['--model_fn', model_fn, '--data_dir', data_dir, '--model', 'vae', '--hidden_sizes', '32', '--btl_size',
              '2', '--batch_size', '64', '--gpu_id', '-1', '--verbose', '0']
    whole = str(tmp_path / 'whole.pth')
    run_cli(lambda: train.main([*common, *part_flags, '--n_epochs', '1']), 'train.py')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--resume', '--n_epochs', '2', '--verbose', '0']), 'train.py')
    run_cli(lambda: train.main([*common[2:], '--model_fn', whole, *part_flags, '--n_epochs', '2']), 'train.py')
    assert_same_run(torch.load(whole, weights_only=True), torch.load(model_fn, weights_only=True))
    out_dir = tmp_path / 'predict'
    capsys.readouterr()
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--out_dir', str(out_dir), '--gpu_id', '-1',
                                  *iw_samples_flag(model_fn, 3), '--what', 'samples', 'metrics']), 'predict.py')
    printed = ' '.join(capsys.readouterr().out.split())
    metrics = json.loads((out_dir / 'metrics.json').read_text())
    if '--likelihood' in part_flags:
        assert metrics['likelihood'].startswith(label) and metrics['nats_of_log_px'] is True and label in printed
    else:
        assert build_model(load_checkpoint(model_fn)['config']).prior.label in label


def test_the_mixture_prior_is_a_normalised_density_of_its_weighted_components():
    torch.manual_seed(0)
    config = make_config(model='vae', hidden_sizes=[5], btl_size=1, prior='mog', n_components=3,
                         image_shape=[1, 1, 6])
    prior = build_model(config).prior
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-2.], [0.], [3.]]))
        prior.logvars.copy_(torch.tensor([[0.], [-1.], [.5]]))
        prior.logits.copy_(torch.tensor([0., 1., 2.]))
    z = torch.linspace(-12, 14, 20001, dtype=torch.float64)[:, None].float()
    density = prior.log_prob(z).double().exp()
    # a Riemann sum on a fine grid: its error is far below the fp32 rounding of the densities (1e-6)
    assert (density.sum() * 26 / 20000).item() == pytest.approx(1, abs=1e-5)
    weights = torch.softmax(prior.logits, 0)
    expected = sum(w * Normal(m, (.5 * lv).exp()).log_prob(z[:, 0]).exp()
                   for w, m, lv in zip(weights, prior.means[:, 0], prior.logvars[:, 0]))
    assert torch.allclose(density.float(), expected, atol=1e-6)
    samples = prior.sample(40000, 'cpu')[:, 0]
    assert samples.mean().item() == pytest.approx((weights * prior.means[:, 0]).sum().item(), abs=.05)


def test_the_gaussian_likelihood_integrates_to_one_and_floors_its_deviation():
    config = make_config(model='vae', hidden_sizes=[5], btl_size=1, likelihood='gaussian', image_shape=[1, 1, 1])
    likelihood = build_model(config).likelihood
    x = torch.linspace(-3, 4, 70001, dtype=torch.float64)[:, None].float()
    logits = torch.full((len(x), 1), .3)
    density = likelihood.log_prob(logits, x).double().exp()
    assert (density.sum() * 7 / 70000).item() == pytest.approx(1, abs=1e-5)
    with torch.no_grad():
        likelihood.log_scale.fill_(-20.)  # a pixel that never changes would narrow it toward 0
    at_mean = likelihood.log_prob(torch.zeros(1, 1), torch.full((1, 1), .5)).item()
    assert at_mean == pytest.approx(-math.log(likelihood.MIN_SCALE * math.sqrt(2 * math.pi)), rel=1e-5)
