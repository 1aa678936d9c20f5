"""Every model of the repository. All of them share one interface, which is all that the
Trainer and predict.py use:

    encode(x) -> z          the code of a batch, |x| = (batch_size, 784)
    decode(z) -> x_hat      images in pixel space
    forward(x) -> x_hat     the reconstruction, decode(encode(x))
    loss(x) -> (loss, parts)  a scalar to minimise, per image, and a dict of its named terms
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal

from utils import CliError, first_line, hidden_size_schedule

INPUT_SIZE = 28 * 28


class Block(nn.Module):
    """Linear -> ReLU -> BatchNorm1d, or Dropout when batch norm is off."""

    def __init__(self, input_size, output_size, use_batch_norm=True, dropout_p=.3):
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(input_size, output_size),
            nn.ReLU(),
            nn.BatchNorm1d(output_size) if use_batch_norm else nn.Dropout(dropout_p),
        )

    def forward(self, x):
        # |x| = (batch_size, input_size)
        return self.block(x)
        # |y| = (batch_size, output_size)


def mirrored_mlps(input_size, hidden_sizes, btl_size, use_batch_norm, dropout_p, encoder_out_size):
    """An encoder input -> h1 -> ... -> hk -> encoder_out_size and the exact mirror
    decoder btl_size -> hk -> ... -> h1 -> input_size, both ending in a plain Linear."""
    def stack(sizes, out_size):
        blocks = [Block(a, b, use_batch_norm, dropout_p) for a, b in zip(sizes[:-1], sizes[1:])]
        return nn.Sequential(*blocks, nn.Linear(sizes[-1], out_size))

    encoder = stack([input_size] + hidden_sizes, encoder_out_size)
    decoder = stack([btl_size] + hidden_sizes[::-1], input_size)
    return encoder, decoder


class Codec(nn.Module):
    """What every model shares: the reconstruction, and the batch loss as the mean of the
    per-image losses that each model defines in image_losses()."""

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x):
        loss, parts = self.image_losses(x)
        return loss.mean(), {name: value.mean() for name, value in parts.items()}


class AutoEncoder(Codec):
    """A deterministic autoencoder. With loss='bce' the decoder outputs logits of a Bernoulli
    per pixel and decode() applies the sigmoid; with loss='mse' it outputs pixels directly."""
    has_prior = False  # no distribution over codes to sample from

    def __init__(self, input_size, hidden_sizes, btl_size, use_batch_norm=True, dropout_p=.3, loss='mse'):
        super().__init__()
        self.loss_type = loss
        self.encoder, self.decoder = mirrored_mlps(input_size, hidden_sizes, btl_size,
                                                   use_batch_norm, dropout_p, encoder_out_size=btl_size)

    def encode(self, x):
        # |x| = (batch_size, input_size)
        return self.encoder(x)
        # |z| = (batch_size, btl_size)

    def decode(self, z):
        out = self.decoder(z)
        return torch.sigmoid(out) if self.loss_type == 'bce' else out

    def image_losses(self, x):
        """The reconstruction error of each image, summed over its pixels."""
        out = self.decoder(self.encode(x))
        if self.loss_type == 'bce':
            recon = F.binary_cross_entropy_with_logits(out, x, reduction='none').sum(1)
        else:
            recon = (out - x).pow(2).sum(1)
        # |recon| = (batch_size,)
        return recon, {'recon': recon}


class VAE(Codec):
    """A variational autoencoder with a diagonal Gaussian posterior q(z|x), a N(0, I) prior and
    a Bernoulli decoder. The loss is the negative ELBO in nats per image; in eval mode z = mu."""
    has_prior = True

    def __init__(self, input_size, hidden_sizes, btl_size, use_batch_norm=True, dropout_p=.3, kl_weight=1.):
        super().__init__()
        self.btl_size = btl_size
        self.kl_weight = kl_weight
        # One head of 2 * btl_size outputs holds both mu and logvar.
        self.encoder, self.decoder = mirrored_mlps(input_size, hidden_sizes, btl_size,
                                                   use_batch_norm, dropout_p, encoder_out_size=2 * btl_size)

    def posterior(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        # |mu| = |logvar| = (batch_size, btl_size)
        return mu, logvar

    def sample_z(self, mu, logvar):
        """The reparameterization trick in training, so gradients flow through mu and
        logvar; the mean of q(z|x) in eval, so that codes and reconstructions are stable."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(.5 * logvar)

    def encode(self, x):
        return self.sample_z(*self.posterior(x))

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def image_losses(self, x):
        mu, logvar = self.posterior(x)
        logits = self.decoder(self.sample_z(mu, logvar))
        # Both terms are summed over their dimensions (784 pixels, btl_size latents) before
        # the batch mean; a per-pixel mean beside a summed KL would weigh the KL 784 times
        # too much and collapse the posterior.
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum(1)
        kl = gaussian_kl(mu, logvar).sum(1)
        return recon + self.kl_weight * kl, {'recon': recon, 'kl': kl}

    def log_importance_weights(self, x, n_samples):
        """log p(x, z_k) - log q(z_k | x) for n_samples draws z_k ~ q(z|x), shape
        (n_samples, batch_size): their mean estimates the ELBO, their log-mean-exp the
        importance-weighted bound on log p(x) (Burda et al., 2016)."""
        mu, logvar = self.posterior(x)
        std = torch.exp(.5 * logvar)
        z = mu + std * torch.randn(n_samples, *mu.shape, device=mu.device)
        # |z| = (n_samples, batch_size, btl_size)
        logits = self.decoder(z.flatten(0, 1)).view(n_samples, len(x), -1)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction='none').sum(-1)
        log_pz = Normal(0., 1.).log_prob(z).sum(-1)
        log_qz_x = Normal(mu, std).log_prob(z).sum(-1)
        return log_px_z + log_pz - log_qz_x


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each element, in closed form."""
    return .5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def build_model(config, input_size=INPUT_SIZE):
    """Builds the model that a config (the flags of train.py, as a dict) describes."""
    hidden_sizes = config['hidden_sizes'] or hidden_size_schedule(input_size, config['btl_size'],
                                                                  config['n_layers'])
    common = dict(input_size=input_size, hidden_sizes=list(hidden_sizes), btl_size=config['btl_size'],
                  use_batch_norm=not config['use_dropout'], dropout_p=config['dropout_p'])
    if config['model'] == 'vae':
        return VAE(**common, kl_weight=config['kl_weight'])
    return AutoEncoder(**common, loss=config['loss'])


def model_from_checkpoint(checkpoint, path):
    """Rebuilds the model from a checkpoint's config alone and loads its weights. The config
    is first built on the meta device (no memory) and compared with the weights, so a config
    that does not describe them is refused before anything is allocated."""
    try:
        with torch.device('meta'):
            expected = {k: tuple(v.shape) for k, v in build_model(checkpoint['config']).state_dict().items()}
        found = {k: tuple(getattr(v, 'shape', ())) for k, v in checkpoint['model'].items()}
        if expected != found:
            name = sorted(expected.keys() ^ found.keys() or
                          {k for k in expected if expected[k] != found[k]})[0]
            raise ValueError(f'{name}: the config gives {expected.get(name, "no such tensor")}, '
                             f'the file holds {found.get(name, "no such tensor")}')
        model = build_model(checkpoint['config'])
        model.load_state_dict(checkpoint['model'])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CliError(f'{path}: its weights do not match its config ({first_line(e)})')
    return model
