import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal, kl_divergence

from config import make_config
from distributions import LOGVAR_MAX, gaussian_kl
from model import Block, build_model, hidden_size_schedule


def linear_sizes(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def chain(sizes):
    return list(zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize('hidden_sizes, btl_size', [([512, 256, 128], 2), ([300], 30), ([700, 10], 10),
                                                    ([64, 64, 64, 64], 1)])
@pytest.mark.parametrize('model_name', ['ae', 'vae'])
def test_encoder_and_decoder_mirror_every_hidden_size(hidden_sizes, btl_size, model_name):
    model = build_model(make_config(model=model_name, hidden_sizes=hidden_sizes, btl_size=btl_size))
    head = 2 * btl_size if model_name == 'vae' else btl_size  # mu and logvar share one head
    assert linear_sizes(model.encoder) == chain([784] + hidden_sizes + [head])
    assert linear_sizes(model.decoder) == chain([btl_size] + hidden_sizes[::-1] + [784])


@pytest.mark.parametrize('n_layers, btl_size, expected', [
    (5, 2, [654, 523, 393, 263, 132]),
    (1, 10, [397]),
    (3, 784, [784, 784, 784]),
])
def test_n_layers_schedule_falls_in_equal_steps(n_layers, btl_size, expected):
    assert hidden_size_schedule(784, btl_size, n_layers) == expected
    model = build_model(make_config(n_layers=n_layers, btl_size=btl_size))
    assert linear_sizes(model.encoder) == chain([784] + expected + [btl_size])
    assert linear_sizes(model.decoder) == chain([btl_size] + expected[::-1] + [784])


def test_n_layers_sizes_of_a_large_input_fall_from_max_hidden_size():
    assert hidden_size_schedule(4800, 2, 5, max_size=1024) == [854, 683, 513, 343, 172]
    assert hidden_size_schedule(784, 2, 5, max_size=1024) == hidden_size_schedule(784, 2, 5)  # below it: as before
    with torch.device('meta'):  # 40 x 40 colour: the default sizes, and the input's own without the cap
        capped = build_model(make_config(image_shape=[3, 40, 40], btl_size=2))
        uncapped = build_model(make_config(image_shape=[3, 40, 40], btl_size=2, max_hidden_size=None))
    assert linear_sizes(capped.encoder) == chain([4800, 854, 683, 513, 343, 172, 2])
    assert linear_sizes(uncapped.encoder)[0] == (4800, 4000)
    assert sum(p.numel() for p in capped.parameters()) < sum(p.numel() for p in uncapped.parameters()) / 8


def test_block_uses_batch_norm_or_dropout():
    with_bn = Block(8, 4)
    with_dropout = Block(8, 4, use_batch_norm=False, dropout_p=.25)
    assert [type(m) for m in with_bn.block] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert [type(m) for m in with_dropout.block] == [nn.Linear, nn.ReLU, nn.Dropout]
    assert with_dropout.block[2].p == .25
    model = build_model(make_config(use_dropout=True, dropout_p=.1))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert all(m.p == .1 for m in model.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize('model_name', ['ae', 'vae'])
def test_every_model_offers_the_same_interface(model_name):
    model = build_model(make_config(model=model_name, btl_size=3)).eval()
    x = torch.rand(5, 784)
    z = model.encode(x)
    assert z.shape == (5, 3)
    assert model.decode(z).shape == (5, 784)
    assert torch.allclose(model(x), model.decode(z))
    loss, parts = model.loss(x)
    assert loss.dim() == 0 and 'recon' in parts


@pytest.mark.parametrize('arch, hidden_sizes, width', [('mlp', [64, 32], 32), ('conv', [8, 16], 16 * 7 * 7),
                                                       ('lstm', [24], 24)])
@pytest.mark.parametrize('model_name', ['ae', 'vae'])
def test_hidden_features_are_what_the_encoders_last_linear_makes_the_code_of(arch, hidden_sizes, width, model_name):
    model = build_model(make_config(model=model_name, arch=arch, hidden_sizes=hidden_sizes, btl_size=3)).eval()
    x = torch.rand(5, 784)
    features = model.hidden_features(x)
    assert features.shape == (5, width)
    head = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1]
    assert torch.allclose(head(features), model.encoder(x))


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    expected = kl_divergence(Normal(mu, torch.exp(.5 * logvar)), Normal(0., 1.))
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-6)


def test_vae_loss_is_the_negative_elbo_per_image():
    torch.manual_seed(0)
    model = build_model(make_config(model='vae', hidden_sizes=[3], btl_size=2, kl_weight=.5,
                                    image_shape=[1, 1, 4])).eval()
    x = torch.tensor([[0., 1., .5, .2], [1., 0., 0., .9]])
    torch.manual_seed(1)
    loss, parts = model.loss(x)

    # By hand: z is drawn from q(z|x), in eval too; the decoder gives Bernoulli logits for each pixel.
    mu, logvar = model.encoder(x)[:, :2], model.encoder(x)[:, 2:].clamp(max=LOGVAR_MAX)
    torch.manual_seed(1)
    z = mu + torch.randn_like(mu) * torch.exp(.5 * logvar)
    p = torch.sigmoid(model.decoder(z))
    recon = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)  # summed over pixels
    var = torch.exp(logvar)
    kl = .5 * (mu ** 2 + var - 1 - torch.log(var)).sum(1)  # summed over latents
    assert torch.allclose(parts['recon'], recon.mean(), atol=1e-5)
    assert torch.allclose(parts['kl'], kl.mean(), atol=1e-5)
    assert torch.allclose(loss, (recon + .5 * kl).mean(), atol=1e-5)


def test_vae_posterior_variance_is_capped_so_an_unusual_image_keeps_a_finite_kl():
    model = build_model(make_config(model='vae', hidden_sizes=[3], btl_size=2, use_dropout=True,
                               image_shape=[1, 1, 4])).eval()
    head = model.encoder[-1]
    with torch.no_grad():  # a head that extrapolates wildly for one of the two latents
        head.bias[2:] = torch.tensor([-1., 60.])
    x = torch.rand(3, 4)
    mu, logvar = model.posterior(x)
    raw = model.encoder(x)[:, 2:]
    assert torch.equal(logvar[:, 0], raw[:, 0])  # below the cap: untouched
    assert (raw[:, 1] > LOGVAR_MAX).all() and (logvar[:, 1] == LOGVAR_MAX).all()
    kl = gaussian_kl(mu, logvar)[:, 1]
    assert (kl <= .5 * (mu[:, 1] ** 2 + torch.exp(torch.tensor(LOGVAR_MAX)) - 1 - LOGVAR_MAX) + 1e-5).all()
    assert torch.isfinite(model.loss(x)[0])


def test_vae_samples_z_in_training_and_uses_mu_in_eval():
    torch.manual_seed(0)
    model = build_model(make_config(model='vae', hidden_sizes=[3], btl_size=2, use_dropout=True, dropout_p=0.,
                               image_shape=[1, 1, 4]))
    x = torch.rand(3, 4)
    mu, logvar = model.posterior(x)
    assert torch.equal(model.eval().encode(x), mu)
    torch.manual_seed(1)
    z = model.train().encode(x)
    torch.manual_seed(1)
    eps = torch.randn_like(mu)
    assert torch.allclose(z, mu + eps * torch.exp(.5 * logvar))


@pytest.mark.parametrize('loss_name', ['mse', 'bernoulli'])
def test_autoencoder_loss_is_summed_over_pixels_and_averaged_over_images(loss_name):
    model = build_model(make_config(hidden_sizes=[3], btl_size=2, likelihood=loss_name, image_shape=[1, 1, 4])).eval()
    x = torch.tensor([[0., 1., .5, .2], [1., 0., 0., .9]])
    loss, _ = model.loss(x)
    x_hat = model(x)
    if loss_name == 'mse':
        expected = ((x_hat - x) ** 2).sum(1).mean()
    else:
        assert ((0 < x_hat) & (x_hat < 1)).all()  # decode() turns the logits into pixels
        expected = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat)).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
