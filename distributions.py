"""The models' parts: the VAE's priors p(z) over codes, and the likelihoods p(x|z) of pixels, the
decoder's distribution of the AutoEncoder and the VAE alike.

Each part is one class and one line in its registry, PRIORS or LIKELIHOODS; train.py's --prior and
--likelihood flags, their --help, the flags of a part's own options (OPTIONS), the rules that refuse
those options elsewhere, config.DEFAULTS and predict.py's labels all read the registries. A part owns
its log-density, its sampling or mean, and its honest name (label), which predict.py, metrics.json
and the figures print.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributions as td
from torch.distributions import Normal

from utils import int_at_least

# A posterior's or a prior component's log-variance is capped here: a posterior wider than the
# N(0, I) prior never helps the ELBO, but an unbounded head can extrapolate on an unusual image to a
# KL that swamps the test mean (docs/results.md, "The default commands").
LOGVAR_MAX = 2.


def reparameterize(mu, logvar, n_samples=None):
    """z = mu + sigma * eps, eps ~ N(0, I): a draw from N(mu, exp(logvar)) through which gradients
    reach mu and logvar; with n_samples, that many draws, |z| = (n_samples, *mu.shape)."""
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    return mu + torch.exp(.5 * logvar) * torch.randn(shape, device=mu.device, dtype=mu.dtype)


def diagonal_normal_log_prob(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return Normal(mu, torch.exp(.5 * logvar)).log_prob(z).sum(-1)


def mixture_log_prob(z, mu, logvar, log_weights):
    """log sum_k w_k N(z; mu_k, diag exp(logvar_k)) of each row of z, |z| = (rows, btl_size),
    |mu| = |logvar| = (K, btl_size). The K Gaussians' log-densities come as matrix products, so that
    memory grows with rows x K, not x btl_size too; in fp32 also under autocast (train.py --amp),
    where bf16 would round these nats to a quarter."""
    with torch.autocast(z.device.type, enabled=False):
        z, mu, logvar = z.float(), mu.float(), logvar.float()
        precision = torch.exp(-logvar)
        log_q = -.5 * (z.pow(2) @ precision.T - 2 * z @ (mu * precision).T
                       + (mu.pow(2) * precision + logvar + math.log(2 * math.pi)).sum(1))
        # |log_q| = (rows, K)
        return torch.logsumexp(log_q + log_weights.float(), 1)


def mixture_sample(n, mu, logvar, log_weights):
    """n draws from the mixture of mixture_log_prob."""
    k = torch.multinomial(log_weights.float().exp(), n, replacement=True)
    return reparameterize(mu[k], logvar[k])


# --- priors ---

class Prior(nn.Module):
    """A prior p(z) over codes of btl_size dimensions: log_prob(z, components) of each code,
    kl(mu, logvar, z, components) of each image and sample(n, device, components). A prior that is a
    function of the encoder gives inputs() to encode with each batch (the VampPrior's pseudo-inputs);
    the posteriors of those inputs reach its methods as components. Others ignore components."""
    OPTIONS = {}   # name -> (argparse type, default, help) of this part's own flags
    uses_inputs = False

    def __init__(self, btl_size, input_size):
        super().__init__()
        self.btl_size = btl_size

    def inputs(self):
        return None

    def kl(self, mu, logvar, z, components):
        """KL(q(z|x) || p(z)) of each image: log q(z|x) - log p(z) at the drawn z, an unbiased
        estimate where there is no closed form."""
        return diagonal_normal_log_prob(z, mu, logvar) - self.log_prob(z, components)


class NormalPrior(Prior):
    """p(z) = N(0, I)."""
    label = 'N(0, I)'
    help = 'N(0, I)'

    def log_prob(self, z, components=None):
        return Normal(0., 1.).log_prob(z).sum(-1)

    def kl(self, mu, logvar, z, components):
        return gaussian_kl(mu, logvar).sum(-1)  # in closed form

    def sample(self, n, device, components=None):
        return torch.randn(n, self.btl_size, device=device)


class VampPrior(Prior):
    """The VampPrior (Tomczak and Welling, 2018): p(z) is the mean of the posteriors q(z|u_k) of
    n_pseudo learned pseudo-inputs u_k, images of their own, kept in [0, 1] by a hardtanh."""
    label = 'the VampPrior'
    help = ('the VampPrior (Tomczak and Welling 2018), a mixture of the posteriors of --n_pseudo learned '
            'pseudo-inputs; needs --use_dropout (or --arch lstm)')
    OPTIONS = {'n_pseudo': (int_at_least(1), 500, 'pseudo-inputs of the VampPrior')}
    uses_inputs = True

    def __init__(self, btl_size, input_size, n_pseudo):
        super().__init__(btl_size, input_size)
        self.pseudo_inputs = nn.Parameter(torch.rand(n_pseudo, input_size))

    def inputs(self):
        return F.hardtanh(self.pseudo_inputs, 0., 1.)

    def log_prob(self, z, components):
        mu, logvar = components
        return mixture_log_prob(z, mu, logvar, torch.full((len(mu),), -math.log(len(mu)), device=mu.device))

    def sample(self, n, device, components):
        mu, logvar = components
        return mixture_sample(n, mu, logvar, torch.zeros(len(mu), device=mu.device)).to(device)


class MixturePrior(Prior):
    """A mixture of K Gaussians with learned means, diagonal variances and weights (the mixture of
    Gaussians prior that Tomczak and Welling 2018 compare the VampPrior with)."""
    label = 'a mixture of learned Gaussians'
    help = 'a mixture of --n_components Gaussians with learned means, variances and weights'
    OPTIONS = {'n_components': (int_at_least(1), 10, 'components K of the mixture of Gaussians prior')}

    def __init__(self, btl_size, input_size, n_components):
        super().__init__(btl_size, input_size)
        self.means = nn.Parameter(torch.randn(n_components, btl_size))
        self.logvars = nn.Parameter(torch.zeros(n_components, btl_size))
        self.logits = nn.Parameter(torch.zeros(n_components))

    def parts(self):
        return self.means, self.logvars.clamp(max=LOGVAR_MAX), torch.log_softmax(self.logits, 0)

    def log_prob(self, z, components=None):
        return mixture_log_prob(z, *self.parts())

    def sample(self, n, device, components=None):
        return mixture_sample(n, *self.parts()).to(device)


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each element, in closed form."""
    return .5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


# --- likelihoods ---

# A product of at most this many numbers in [0.5, 1] stays above 2^-126, fp32's smallest normal number.
MAX_PRODUCT_TERMS = 126


def product_chunk(n):
    """The largest divisor of n that is at most MAX_PRODUCT_TERMS: the pixels whose sigmoids
    Bernoulli.log_prob multiplies before it takes a log."""
    return max(d for d in range(1, min(n, MAX_PRODUCT_TERMS) + 1) if n % d == 0)


class Likelihood(nn.Module):
    """The decoder's distribution p(x|z) of independent pixels, from the decoder's output l (one
    value per pixel), for the AutoEncoder (its reconstruction loss is -log_prob) and the VAE alike.
    log_prob sums over the pixels; x broadcasts against l (one image for many samples of z). mean(l)
    is the image shown. describe() is (what the nats are, whether they are -log p(x) of a
    normalised likelihood). binary: whether the pixels are binary (train.py --binarize)."""
    OPTIONS = {}
    takes_binary_pixels = False

    def __init__(self, input_size, binary):
        super().__init__()
        self.binary = binary


class SquaredError(Likelihood):
    """The squared error summed over the pixels, the decoder's output the image itself: minus the
    log-density of a Gaussian of variance 1/2 per pixel without its constant, so not nats of
    -log p(x)."""
    help = 'squared error summed over the pixels (a Gaussian of fixed variance without its constant)'
    takes_binary_pixels = True  # a loss of any pixels, which claims no density

    def describe(self):
        return 'squared error of pixel intensities: a Gaussian of fixed variance without its constant, not nats', False

    def mean(self, out):
        return out

    def log_prob(self, out, x):
        # mse_loss, not (out - x).pow(2): one fused kernel in the backward instead of several (docs/performance.md)
        return -F.mse_loss(out, x.expand_as(out), reduction='none').sum(-1)


class Bernoulli(Likelihood):
    """A Bernoulli per pixel: a probability of binary pixels; of grayscale pixels, minus a
    cross-entropy, not a log-likelihood."""
    help = 'a Bernoulli per pixel, a probability of binary pixels (--binarize); of grayscale pixels a cross-entropy'
    takes_binary_pixels = True

    def describe(self):
        if self.binary:
            return 'Bernoulli of binary pixels (--binarize): nats of -log p(x)', True
        return 'Bernoulli of grayscale pixels: a cross-entropy, not a log-likelihood', False

    def mean(self, logits):
        return torch.sigmoid(logits)

    def log_prob(self, logits, x):
        # x l - softplus(l), the log-probability of x in {0, 1} (of grayscale x, minus the cross-entropy),
        # with softplus(l) = max(l, 0) - log sigmoid(|l|). The logs of the sigmoids, each in [0.5, 1],
        # are taken as the log of their product over a few pixels at a time: one log per chunk of
        # pixels instead of one per pixel, and no exp, makes a 5,000-sample -log p(x) several times
        # faster. Rounding a sigmoid near 1 costs below 1e-7 nats per pixel.
        # max(l, 0) = (l + |l|) / 2, summed without a tensor of its own.
        n_pixels = logits.shape[-1]
        chunk = product_chunk(n_pixels)
        magnitudes = logits.abs()
        relu_sums = (logits.sum(-1) + magnitudes.sum(-1)) / 2
        log_sigmoids = torch.sigmoid_(magnitudes).unflatten(-1, (n_pixels // chunk, chunk)).prod(-1).log().sum(-1)
        return torch.einsum('...p,...p->...', logits, x) - relu_sums + log_sigmoids


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019), a density on [0, 1] of
    grayscale pixels; its mean is the image shown."""
    help = 'the continuous Bernoulli (Loaiza-Ganem and Cunningham 2019), a density of grayscale pixels'

    def describe(self):
        return 'continuous Bernoulli of grayscale pixels, a density: nats of -log p(x)', True

    def mean(self, logits):
        return td.ContinuousBernoulli(logits=logits).mean

    def log_prob(self, logits, x):
        # torch's log-normaliser is a Taylor series near logits 0, where the closed form is 0 / 0.
        return td.ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)


class Gaussian(Likelihood):
    """A Gaussian per pixel, its mean sigmoid(l) and its standard deviation a learned parameter of
    each pixel (never below MIN_SCALE, one 255th: a pixel that never changes, such as an image's
    border, would otherwise narrow it toward 0 and its density toward infinity)."""
    help = ('a Gaussian per pixel with a standard deviation learned for each pixel, a density of grayscale or '
            'colour pixels on the real line')
    MIN_SCALE = 1 / 255

    def __init__(self, input_size, binary):
        super().__init__(input_size, binary)
        self.log_scale = nn.Parameter(torch.full((input_size,), math.log(.1)))

    def describe(self):
        return ('Gaussian of pixel intensities with a learned deviation per pixel, a density on the real line: nats '
                'of -log p(x), not comparable with likelihoods of binary or [0, 1] pixels', True)

    def mean(self, logits):
        return torch.sigmoid(logits)

    def log_prob(self, logits, x):
        log_scale = self.log_scale.clamp(min=math.log(self.MIN_SCALE))
        return Normal(torch.sigmoid(logits), log_scale.exp()).log_prob(x).sum(-1)


PRIORS = {'normal': NormalPrior, 'vamp': VampPrior, 'mog': MixturePrior}
LIKELIHOODS = {'mse': SquaredError, 'bernoulli': Bernoulli, 'cbernoulli': ContinuousBernoulli, 'gaussian': Gaussian}
# The decoder's distribution when --likelihood is left out.
DEFAULT_LIKELIHOOD = {'ae': 'mse', 'vae': 'bernoulli'}
REGISTRIES = {'prior': PRIORS, 'likelihood': LIKELIHOODS}


def part_options():
    """Every part's own flags: name -> (the registry's flag, the part's name, argparse type, default, help)."""
    return {option: (kind, name, *spec) for kind, registry in REGISTRIES.items() for name, part in registry.items()
            for option, spec in part.OPTIONS.items()}


def build_part(kind, m, *args, **kwargs):
    """The part that the model config m chooses for kind ('prior' or 'likelihood'), with its own options."""
    part = REGISTRIES[kind][getattr(m, kind)]
    return part(*args, **kwargs, **{option: getattr(m, option) for option in part.OPTIONS})
