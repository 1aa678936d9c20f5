"""Every model of the repository, built from a RunConfig by build_model (no file is read here:
checkpoint.py loads). All of them share one interface, which is all that the Trainer uses:

    encode(x) -> z          the code of a batch, |x| = (batch_size, C * H * W), 784 for MNIST
    decode(z) -> x_hat      images in pixel space
    forward(x) -> x_hat     the reconstruction, decode(encode(x))
    loss(x) -> (loss, parts)  a scalar to minimise, per image, and a dict of its named terms
    set_epoch(epoch)        told by the Trainer before each epoch (the VAE's KL warm-up uses it)

predict.py and its analysis read more of a model, the same for both kinds: image_losses(x) (the loss
and its parts per image), hidden_features(x), corrupt(x) (the training noise), likelihood, and
has_prior, which is True for a VAE, whose prior, sample_prior(n, device) and
log_importance_weights(x, k) they use then.
"""
import math
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from distributions import LOGVAR_MAX, build_part, diagonal_normal_log_prob, reparameterize

CONV_CHANNELS = [32, 64]  # --arch conv without --hidden_sizes: 28 -> 14 -> 7
LSTM_HIDDEN_SIZE = 128
BN_EPS = 1e-5  # PyTorch's default
ACTIVATIONS = {'relu': nn.ReLU, 'leaky_relu': nn.LeakyReLU, 'gelu': nn.GELU, 'tanh': nn.Tanh,
               'sigmoid': nn.Sigmoid, 'none': nn.Identity}


class GatedLinear(nn.Module):
    """Gated units, h = (W1 x + b1) * sigmoid(W2 x + b2) (Dauphin et al., 2017), the hidden layers
    of the VampPrior and Exemplar VAE papers' networks: the gate replaces the activation. W1 and
    W2 are the two halves of one Linear of twice the width: one matrix product gives both, and
    one product of 2n columns runs faster than two of n."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear = nn.Linear(input_size, 2 * output_size)

    def forward(self, x):
        h, gate = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(gate)


class Block(nn.Module):
    """Linear -> ReLU -> BatchNorm1d, or Dropout when batch norm is off. Another activation,
    or another layer in place of the Linear (a tied Linear, a convolution), can be given;
    gated makes the Linear a GatedLinear, with no activation after it."""

    def __init__(self, input_size, output_size, use_batch_norm=True, dropout_p=.3, activation='relu', layer=None,
                 bn_eps=BN_EPS, gated=False):
        super().__init__()
        if gated:
            layer, activation = GatedLinear(input_size, output_size), 'none'
        layer = layer or nn.Linear(input_size, output_size)
        batch_norm = nn.BatchNorm2d if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) else nn.BatchNorm1d
        self.block = nn.Sequential(
            layer,
            ACTIVATIONS[activation](),
            batch_norm(output_size, eps=bn_eps) if use_batch_norm else nn.Dropout(dropout_p),
        )

    def forward(self, x):
        # |x| = (batch_size, input_size)
        return self.block(x)
        # |y| = (batch_size, output_size)


class TiedLinear(nn.Module):
    """A Linear whose weight is the transpose of another Linear's (its mirror in the
    encoder), with a bias of its own. Of a VAE's head it takes the mu rows."""

    def __init__(self, mirror, in_features):
        super().__init__()
        self.mirror = (mirror,)  # a tuple, so that the encoder's weight is not registered twice
        self.in_features, self.out_features = in_features, mirror.in_features
        self.bias = nn.Parameter(torch.zeros(self.out_features))

    def forward(self, x):
        return F.linear(x, self.mirror[0].weight[:self.in_features].t(), self.bias)


def mirrored_mlps(input_size, hidden_sizes, btl_size, encoder_out_size, tied=False, gated=False, **block):
    """An encoder input -> h1 -> ... -> hk -> encoder_out_size and the exact mirror
    decoder btl_size -> hk -> ... -> h1 -> input_size, both ending in a plain Linear.
    With tied, each decoder Linear uses the transposed weight of its mirror; with gated, the
    hidden layers are GatedLinear (never both: a gated layer has no single weight to tie)."""
    block = dict(block, gated=gated)
    sizes = [input_size] + hidden_sizes
    encoder = nn.Sequential(*[Block(a, b, **block) for a, b in zip(sizes[:-1], sizes[1:])],
                            nn.Linear(sizes[-1], encoder_out_size))
    encoder_linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    sizes = [btl_size] + hidden_sizes[::-1] + [input_size]
    layers = [TiedLinear(mirror, a) if tied else None for mirror, a in zip(encoder_linears[::-1], sizes[:-1])]
    hidden = [Block(a, b, layer=layer, **block) for layer, a, b in zip(layers[:-1], sizes[:-2], sizes[1:-1])]
    decoder = nn.Sequential(*hidden, layers[-1] or nn.Linear(sizes[-2], sizes[-1]))
    return encoder, decoder


def mirrored_convs(image_shape, channels, btl_size, encoder_out_size, **block):
    """Conv2d blocks (3 x 3, stride 2) from image_shape (C, H, W) through the given channels,
    then a Linear to encoder_out_size; the decoder mirrors it with a Linear and
    ConvTranspose2d blocks back to C x H x W."""
    sizes = [tuple(image_shape[1:])]
    for _ in channels:
        sizes.append(tuple((side + 1) // 2 for side in sizes[-1]))  # 28 -> 14 -> 7 -> 4 ...
    ins, flat = [image_shape[0]] + channels[:-1], channels[-1] * math.prod(sizes[-1])
    encoder = nn.Sequential(
        nn.Unflatten(1, tuple(image_shape)),
        *[Block(a, b, layer=nn.Conv2d(a, b, 3, stride=2, padding=1), **block) for a, b in zip(ins, channels)],
        nn.Flatten(),
        nn.Linear(flat, encoder_out_size))

    def up(a, b, size_in, size_out):  # output_padding makes each layer land on its mirror's size
        return nn.ConvTranspose2d(a, b, 3, stride=2, padding=1,
                                  output_padding=tuple(o - (2 * i - 1) for i, o in zip(size_in, size_out)))

    ups = [up(b, a, sizes[i + 1], sizes[i]) for i, (a, b) in reversed(list(enumerate(zip(ins, channels))))]
    decoder = nn.Sequential(
        Block(btl_size, flat, **block),
        nn.Unflatten(1, (channels[-1], *sizes[-1])),
        *[Block(layer.in_channels, layer.out_channels, layer=layer, **block) for layer in ups[:-1]],
        ups[-1],
        nn.Flatten())
    return encoder, decoder


def to_rows(x, image_shape):
    """Flat images (B, C * H * W) -> their rows (B, H, C * W), each row's channels side by side."""
    c, h, w = image_shape
    return x.view(len(x), c, h, w).transpose(1, 2).reshape(len(x), h, c * w)


def from_rows(rows, image_shape):
    """The inverse of to_rows."""
    c, h, w = image_shape
    return rows.view(len(rows), h, c, w).transpose(1, 2).flatten(1)


def fp32_lstm(x):
    """The LSTM runs in fp32 also under autocast (train.py --amp): oneDNN has no bf16 LSTM on CPUs
    without bf16 instructions (it fails to build one there), and an LSTM this small gains little."""
    return torch.autocast(x.device.type, enabled=False)


class RowLSTMEncoder(nn.Module):
    """Reads an image as a sequence of its rows (28 rows of 28 pixels for MNIST); the last
    hidden state, through a Linear, is the code."""

    def __init__(self, image_shape, hidden_size, out_size):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.lstm = nn.LSTM(image_shape[0] * image_shape[2], hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, out_size)

    def forward(self, x):
        with fp32_lstm(x):
            _, (h, _) = self.lstm(to_rows(x, self.image_shape).float())
        # |h| = (1, batch_size, hidden_size)
        return self.head(h[-1])


class RowLSTMDecoder(nn.Module):
    """Repeats the code at each of the image's rows; an LSTM and a per-step Linear write the
    rows."""

    def __init__(self, image_shape, btl_size, hidden_size):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.lstm = nn.LSTM(btl_size, hidden_size, batch_first=True)
        self.row = nn.Linear(hidden_size, image_shape[0] * image_shape[2])

    def forward(self, z):
        with fp32_lstm(z):
            y, _ = self.lstm(z[:, None].expand(-1, self.image_shape[1], -1).float())
        # |y| = (batch_size, H, hidden_size)
        return from_rows(self.row(y), self.image_shape)


class Codec(nn.Module):
    """What every model shares: an encoder and a decoder network (of any --arch), input
    corruption for denoising, decoding and log p(x|z) under the decoder's distribution (a
    subclass sets self.likelihood, in the order it registered its parts before, so that older
    checkpoints' optimizer states still match), and the batch loss as the mean of the per-image
    losses that each model defines in image_losses()."""

    def __init__(self, encoder, decoder, btl_size, noise=None, noise_level=0.):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.btl_size, self.noise, self.noise_level = btl_size, noise, noise_level

    def corrupt(self, x):
        """A noisy copy of x for a denoising autoencoder (x itself when there is no noise)."""
        if self.noise == 'gaussian':
            return (x + self.noise_level * torch.randn_like(x)).clamp(0, 1)
        if self.noise == 'masking':
            # A share noise_level of the pixels set to 0 and the others scaled up, as inverted
            # dropout does, so that a clean input has the scale the network was trained on.
            return F.dropout(x, self.noise_level, training=True)
        if self.noise == 'salt_pepper':  # a share noise_level of the pixels set to 0 or 1
            hit = torch.rand_like(x) < self.noise_level
            return torch.where(hit, (torch.rand_like(x) < .5).to(x.dtype), x)
        return x

    def training_input(self, x):
        """Training corrupts the input afresh each batch; evaluation sees it clean."""
        return self.corrupt(x) if self.training else x

    def set_epoch(self, epoch):
        """Called by the Trainer before each epoch, for schedules that depend on it."""

    def forward(self, x):
        return self.decode(self.encode(x))

    def decode(self, z):
        return self.likelihood.mean(self.decoder(z).float())

    def log_likelihood(self, out, x):
        """log p(x | z) of each image, summed over its pixels, from the decoder's output; x
        broadcasts against it (one image for many samples of z)."""
        return self.likelihood.log_prob(out.float(), x)  # fp32 also under autocast (train.py --amp)

    def hidden_features(self, x):
        """The encoder's last hidden layer: the input of the Linear that every encoder ends
        with, wider than the code (2,048 values for the conv encoder of 128 channels on 28 x 28)."""
        head = [m for m in self.encoder.modules() if isinstance(m, nn.Linear)][-1]
        seen = []
        hook = head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
        try:
            self.encoder(x)
        finally:
            hook.remove()
        return seen[0].flatten(1).float()
        # |features| = (batch_size, head.in_features)

    def loss(self, x):
        loss, parts = self.image_losses(x)
        return loss.mean(), {name: value.mean() for name, value in parts.items()}


class AutoEncoder(Codec):
    """A deterministic autoencoder. Its reconstruction error is -log p(x|x_hat) under the
    decoder's distribution, a part of distributions.py (LIKELIHOODS): the squared error by default,
    whose decoder outputs the pixels; with a Bernoulli the decoder outputs logits and decode()
    gives their sigmoid. l1 and sparsity add penalties on the code; with sparsity the code passes
    through a sigmoid, so that the mean activation of a code unit is a probability."""
    has_prior = False  # no distribution over codes to sample from

    def __init__(self, encoder, decoder, btl_size, likelihood, l1=0., sparsity=None, sparsity_weight=1., **codec):
        super().__init__(encoder, decoder, btl_size, **codec)
        self.likelihood = likelihood
        self.l1, self.sparsity, self.sparsity_weight = l1, sparsity, sparsity_weight

    def encode(self, x):
        # |x| = (batch_size, input_size)
        z = self.encoder(x).float()  # fp32 also under autocast (train.py --amp), for the penalties on it
        # |z| = (batch_size, btl_size)
        return torch.sigmoid(z) if self.sparsity else z

    def image_losses(self, x):
        """The reconstruction error of each image, summed over its pixels, and the penalties."""
        z = self.encode(self.training_input(x))
        recon = -self.log_likelihood(self.decoder(z), x)
        # |recon| = (batch_size,)
        parts = {'recon': recon}
        if self.l1:
            parts['l1'] = self.l1 * z.abs().sum(1)
        if self.sparsity:
            # KL(rho || mean activation of each code unit over the batch), the same for every image
            rho, rho_hat = self.sparsity, z.mean(0).clamp(1e-6, 1 - 1e-6)
            kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
            parts['sparsity'] = self.sparsity_weight * kl.sum().expand(len(x))
        return sum(parts.values()), parts


class VAE(Codec):
    """A variational autoencoder with a diagonal Gaussian posterior q(z|x) (its log-variance capped
    at LOGVAR_MAX), a prior p(z) and a likelihood p(x|z) of independent pixels, each a part of
    distributions.py (PRIORS, LIKELIHOODS).

    The loss is the negative ELBO in nats per image, with z drawn from q(z|x) in training and in
    evaluation alike (one draw per image), its KL term weighed by kl_weight (beta), which rises
    linearly over the first kl_anneal epochs of training; evaluation always weighs it fully, so that
    epochs compare. With iwae_k > 1 training minimises the importance-weighted bound instead.
    encode() gives z = mu in eval."""
    has_prior = True

    def __init__(self, encoder, decoder, btl_size, prior, likelihood, kl_weight=1., kl_anneal=0, iwae_k=1, **codec):
        super().__init__(encoder, decoder, btl_size, **codec)
        self.prior, self.likelihood = prior, likelihood
        self.kl_weight, self.kl_anneal, self.iwae_k = kl_weight, kl_anneal, iwae_k
        self.kl_ramp = 1.

    def set_epoch(self, epoch):
        # epoch / kl_anneal, never 0: with no KL term at all, nothing holds the posteriors' variances
        # (a VampPrior's KL then reaches millions of nats in the first epoch).
        self.kl_ramp = min(1., epoch / self.kl_anneal) if self.kl_anneal else 1.

    def posterior(self, x):
        # One head of 2 * btl_size outputs holds both mu and logvar; they are fp32 also under
        # autocast (train.py --amp), where the networks run in bf16, for the KL and the sampling.
        mu, logvar = self.encoder(x).float().chunk(2, dim=-1)
        # |mu| = |logvar| = (batch_size, btl_size)
        return mu, logvar.clamp(max=LOGVAR_MAX)

    def encode(self, x):
        """A draw from q(z|x) in training, so gradients flow through mu and logvar; the mean of
        q(z|x) in eval, so that codes and reconstructions are stable."""
        mu, logvar = self.posterior(x)
        return reparameterize(mu, logvar) if self.training else mu

    def posteriors(self, x):
        """q(z|x) of the batch, and the posteriors of the prior's own inputs (else None), in one
        encoder pass: one product of batch + n_pseudo rows per layer instead of two."""
        inputs = self.prior.inputs()
        if inputs is None:
            return self.posterior(x), None
        mu, logvar = self.posterior(torch.cat([x, inputs.to(x.dtype)]))
        return (mu[:len(x)], logvar[:len(x)]), (mu[len(x):], logvar[len(x):])

    def prior_components(self):
        """The posteriors of the prior's own inputs, or None."""
        inputs = self.prior.inputs()
        return None if inputs is None else self.posterior(inputs)

    def log_prior(self, z, components=None):
        """log p(z) of each code, |z| = (rows, btl_size); components from posteriors(), else computed here."""
        return self.prior.log_prob(z, components or self.prior_components())

    @torch.no_grad()
    def sample_prior(self, n, device):
        """n codes drawn from the prior."""
        return self.prior.sample(n, device, self.prior_components())

    def image_losses(self, x):
        if self.training and self.iwae_k > 1:
            # The importance-weighted bound on log p(x) with iwae_k draws per image (Burda et al.,
            # 2016), tighter than the ELBO; validation still measures the ELBO, so that runs compare.
            log_w = self.log_importance_weights(x, self.iwae_k)
            return math.log(self.iwae_k) - torch.logsumexp(log_w, 0), {}
        (mu, logvar), components = self.posteriors(self.training_input(x))
        # z is drawn in evaluation too: the loss is then the ELBO, not a reconstruction at mu.
        z = reparameterize(mu, logvar)
        # Both terms are summed over their dimensions (784 pixels, btl_size latents) before
        # the batch mean; a per-pixel mean beside a summed KL would weigh the KL 784 times
        # too much and collapse the posterior.
        recon = -self.log_likelihood(self.decoder(z), x)
        kl = self.prior.kl(mu, logvar, z, components)
        beta = self.kl_weight * (self.kl_ramp if self.training else 1.)
        return recon + beta * kl, {'recon': recon, 'kl': kl}

    def log_importance_weights(self, x, n_samples):
        """log p(x, z_k) - log q(z_k | x) for n_samples draws z_k ~ q(z|x), shape
        (n_samples, batch_size): their mean estimates the ELBO, their log-mean-exp the
        importance-weighted bound on log p(x) (Burda et al., 2016). In training the encoder sees
        the corrupted input of a denoising model, as in image_losses."""
        (mu, logvar), components = self.posteriors(self.training_input(x))
        z = reparameterize(mu, logvar, n_samples)
        # |z| = (n_samples, batch_size, btl_size)
        logits = self.decoder(z.flatten(0, 1)).view(n_samples, len(x), -1)
        log_px_z = self.log_likelihood(logits, x)  # x broadcast over the samples, never copied
        log_pz = self.prior.log_prob(z.flatten(0, 1), components).view(n_samples, len(x))
        return log_px_z + log_pz - diagonal_normal_log_prob(z, mu, logvar)


def hidden_size_schedule(input_size, btl_size, n_layers, max_size=None):
    """n_layers hidden sizes falling in equal steps from input_size, or from max_size when that is
    smaller, toward btl_size.

    The steps divide (top - btl_size) into n_layers + 1 parts, so the last hidden layer still sits
    one step above the bottleneck: 784 -> 654 -> 523 -> 393 -> 263 -> 132 -> 2 for n_layers=5,
    btl_size=2. A colour image of 40 x 40 (4,800 values) under max_size 1024 gets 854 683 513 343
    172, some 10 million weights, where falling from 4,800 would take 90 million.
    """
    top = input_size if max_size is None else min(input_size, max_size)
    step = (top - btl_size) / (n_layers + 1)
    return [max(round(top - step * (i + 1)), 1) for i in range(n_layers)]


def block_options(m):
    """What each Block of an architecture takes from the model's config m."""
    return dict(use_batch_norm=not m.use_dropout, dropout_p=m.dropout_p, activation=m.activation, bn_eps=m.bn_eps)


def build_mlp(m, encoder_out_size):
    input_size = math.prod(m.image_shape)
    hidden_sizes = m.hidden_sizes or hidden_size_schedule(input_size, m.btl_size, m.n_layers, m.max_hidden_size)
    return mirrored_mlps(input_size, list(hidden_sizes), m.btl_size, encoder_out_size, tied=m.tied, gated=m.gated,
                         **block_options(m))


def build_conv(m, encoder_out_size):
    return mirrored_convs(m.image_shape, list(m.hidden_sizes or CONV_CHANNELS), m.btl_size, encoder_out_size,
                          **block_options(m))


def build_lstm(m, encoder_out_size):
    hidden_size = (m.hidden_sizes or [LSTM_HIDDEN_SIZE])[0]
    return (RowLSTMEncoder(m.image_shape, hidden_size, encoder_out_size),
            RowLSTMDecoder(m.image_shape, m.btl_size, hidden_size))


class Architecture(NamedTuple):
    help: str
    build: Callable  # (model config, encoder_out_size) -> (encoder, decoder)
    flags: frozenset  # the flags of ARCHITECTURE_FLAGS that it reads; train.py refuses the others


# The flags that only some architectures read (--hidden_sizes, --btl_size and the rest apply to every one).
ARCHITECTURE_FLAGS = frozenset({'n_layers', 'max_hidden_size', 'tied', 'gated', 'use_dropout', 'dropout_p', 'bn_eps',
                                'activation'})
BLOCK_FLAGS = frozenset({'use_dropout', 'dropout_p', 'bn_eps', 'activation'})
# Each architecture is a builder function and one line here; train.py's --arch reads this table.
ARCHITECTURES = {
    'mlp': Architecture('Blocks of Linear layers, sizes from --hidden_sizes or --n_layers', build_mlp,
                        ARCHITECTURE_FLAGS),
    'conv': Architecture(f'Conv2d blocks (3x3, stride 2) with channels from --hidden_sizes (default '
                         f'{" ".join(map(str, CONV_CHANNELS))}) and a ConvTranspose2d mirror', build_conv, BLOCK_FLAGS),
    'lstm': Architecture(f'rows as a sequence, an LSTM of --hidden_sizes[0] units (default {LSTM_HIDDEN_SIZE}) each '
                         f'way', build_lstm, frozenset()),
}


def build_model(config):
    """Builds the model that a RunConfig describes: its model part, and whether its pixels are binary."""
    m = config.model
    input_size = math.prod(m.image_shape)
    encoder, decoder = ARCHITECTURES[m.arch].build(m, 2 * m.btl_size if m.is_vae else m.btl_size)
    codec = dict(noise=m.noise, noise_level=m.noise_level)
    likelihood = build_part('likelihood', m, input_size, binary=config.data.binarize)
    if m.is_vae:
        return VAE(encoder, decoder, m.btl_size, prior=build_part('prior', m, m.btl_size, input_size),
                   likelihood=likelihood, kl_weight=m.kl_weight, kl_anneal=m.kl_anneal, iwae_k=m.iwae_k, **codec)
    return AutoEncoder(encoder, decoder, m.btl_size, likelihood=likelihood, l1=m.l1, sparsity=m.sparsity,
                       sparsity_weight=m.sparsity_weight, **codec)
