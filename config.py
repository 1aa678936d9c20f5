"""The configuration of a run, written once: what rebuilds the network (ModelConfig), how it is
trained (TrainingConfig) and on what (DataConfig), held together by one frozen RunConfig. train.py's
flags build it (flags.py), a checkpoint saves its three parts (checkpoint.py), and library code takes
the part it needs and reads attributes: config.model.btl_size, config.training.lr, config.data.dataset.

Here too, as pure functions of a config: the rules that refuse a flag the config cannot use
(refusal), and the batch size and epochs fitted to a small data set (fit_length). And the recipes of
docs/results.md and of the one-class protocol, as configs, for recipes.py, oneclass.py and bench.py.
The options of one run that change nothing it learns (where the checkpoint goes, the device, the
log) are RunOptions, never saved.
"""
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import NamedTuple

from distributions import DEFAULT_LIKELIHOOD, LIKELIHOODS, PRIORS, part_options
from model import ARCHITECTURE_FLAGS, ARCHITECTURES


@dataclass(frozen=True)
class NetworkConfig:
    """What rebuilds the network and its loss; ModelConfig adds the VAE parts' own options."""
    model: str = 'ae'                     # 'ae' or 'vae'
    arch: str = 'mlp'                     # a name of model.ARCHITECTURES
    n_layers: int = 5                     # hidden layers per side when hidden_sizes is None
    hidden_sizes: list[int] | None = None  # explicit encoder sizes (conv: channels; lstm: units)
    max_hidden_size: int | None = 1024    # n_layers' widest layer (None: the input's size, as older checkpoints)
    btl_size: int = 10
    use_dropout: bool = False             # Dropout instead of BatchNorm in every Block
    dropout_p: float = .3
    bn_eps: float = 1e-5                  # PyTorch's default
    activation: str = 'relu'
    tied: bool = False
    gated: bool = False                   # --arch mlp: hidden layers of gated units, h = (W1 x) * sigmoid(W2 x)
    likelihood: str | None = None         # a name of distributions.LIKELIHOODS; None: the model's own
    kl_weight: float = 1.
    kl_anneal: int = 0
    prior: str = 'normal'                 # VAE: a name of distributions.PRIORS, N(0, I) by default
    iwae_k: int = 1                       # VAE: train on the importance-weighted bound with this many samples
    noise: str | None = None              # 'gaussian', 'masking' or 'salt_pepper'
    noise_level: float = .3
    l1: float = 0.
    sparsity: float | None = None
    sparsity_weight: float = 1.
    # (channels, height, width) of the input: not a flag, set from the data
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])

    @property
    def is_vae(self):
        return self.model == 'vae'


# The options of the VAE's parts (--n_pseudo of the VampPrior, ...) are declared by the parts
# themselves (distributions.py), and are fields of ModelConfig like the others.
ModelConfig = make_dataclass('ModelConfig', [(name, type(default), field(default=default))
                                             for name, (_, _, _, default, _) in part_options().items()],
                             bases=(NetworkConfig,), frozen=True)
ModelConfig.__doc__ = 'What rebuilds the network and its loss, the options of its parts included.'


@dataclass(frozen=True)
class TrainingConfig:
    n_epochs: int = 20                    # when not given: this, or more epochs for min_steps on a small data set
    batch_size: int = 256                 # when not given: this, or less on a small data set (fit_length)
    min_steps: int = 2000                 # optimizer steps that a run of the default length takes at least
    train_ratio: float = .8
    optimizer: str = 'adam'
    lr: float = 1e-3
    weight_decay: float = 0.
    scheduler: str = 'none'
    patience: int = 0                     # stop after this many epochs without a better valid loss (0: never)
    ema: float = 0.                       # decay of an average of the weights, which is validated and saved (0: none)
    amp: bool = False
    compile: bool = False
    seed: int = 1


@dataclass(frozen=True)
class DataConfig:
    dataset: str = 'mnist'
    data_dir: str = './data'
    target_labels: list[int] | None = None  # class indices
    image_size: list[int] | None = None     # [height, width] to resize the images to
    channels: int | None = None             # 1 (gray) or 3 (colour) to convert the images to
    binarize: bool = False                  # Bernoulli draws of the pixels: afresh every training batch, else once


PARTS = {'model': ModelConfig, 'training': TrainingConfig, 'data': DataConfig}
# The part of every flag, e.g. PART_OF['btl_size'] == 'model'; no two parts share a name.
PART_OF = {f.name: part for part, kind in PARTS.items() for f in fields(kind)}
DEFAULTS = {name: value for kind in PARTS.values() for name, value in asdict(kind()).items()}
TYPES = {f.name: f.type for kind in PARTS.values() for f in fields(kind)}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run learns from, in three parts; what a checkpoint saves."""
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_flags(cls, flags):
        """The config of a dict of flags (DEFAULTS' keys), the defaults for those it lacks; a likelihood
        left out (None) is the model's own. A name that is not a flag is refused (KeyError), so that a
        typo cannot pass silently."""
        unknown = sorted(flags.keys() - PART_OF.keys())
        if unknown:
            raise KeyError(f'not a configuration key: {unknown[0]}')
        flags = {**DEFAULTS, **flags}
        if flags['likelihood'] is None:
            flags['likelihood'] = DEFAULT_LIKELIHOOD[flags['model']]
        return cls(**{part: kind(**{name: flags[name] for name in kind.__dataclass_fields__})
                      for part, kind in PARTS.items()})

    def flags(self):
        """The config as one dict of flags, {'btl_size': 10, 'lr': 0.001, ...}."""
        return {name: value for part in PARTS for name, value in asdict(getattr(self, part)).items()}

    def replace(self, **changes):
        """A copy with some flags changed, e.g. config.replace(btl_size=2, lr=3e-3)."""
        return RunConfig.from_flags({**self.flags(), **changes})

    def saved(self):
        """The three parts as a checkpoint saves them: {'model_config': {...}, 'training_config': ..., ...}."""
        return {f'{part}_config': asdict(getattr(self, part)) for part in PARTS}


def make_config(**changes):
    """The default configuration with changes, e.g. make_config(model='vae', btl_size=20)."""
    return RunConfig.from_flags(changes)


def wrong_type(flags):
    """The first value of a dict of flags that is not of its flag's type, in words (an int passes for a
    float, a bool for nothing but a bool); None when every value is."""
    for name, value in flags.items():
        if name in TYPES and not has_type(value, TYPES[name]):
            return f'{name} is {value!r}, not {getattr(TYPES[name], "__name__", TYPES[name])}'
    return None


def has_type(value, kind):
    """Whether value is of kind: a type, list[T], or a union of them such as list[int] | None."""
    if isinstance(kind, types.UnionType):
        return any(has_type(value, k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(has_type(v, typing.get_args(kind)[0]) for v in value)
    if kind is type(None):
        return value is None
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, int if kind is int else (int, float) if kind is float else kind)


class RunOptions(NamedTuple):
    """train.py's options of one run: where its files go and what it runs on. They change nothing
    that the run learns, and are never saved."""
    model_fn: str
    gpu_id: int = -1
    threads: int | None = None
    verbose: int = 1
    resume: bool = False
    overwrite: bool = False
    log_dir: str | None = None            # None: MODEL_log beside MODEL.pth, unless no_log
    no_log: bool = False
    log_every_n_steps: int = 50           # the training loss every N optimizer steps (0: per epoch only)
    log_images_every: int = 5             # valid images and reconstructions every N epochs (0: never)


# Flags that only some configs use: name -> a rule giving, for a config, why that flag does nothing
# there (None where it is used). A flag given where its rule says no is refused, never ignored.
AE_ONLY = 'applies to --model ae only (the VAE has its own KL term on the code)'
VAE_ONLY = 'applies to --model vae only'


def sizes_from_n_layers(c):
    """--n_layers and --max_hidden_size set the hidden sizes that --hidden_sizes would give instead."""
    return 'is overridden by --hidden_sizes' if c.model.hidden_sizes else None


USED_ONLY_IF = {
    'l1': lambda c: AE_ONLY if c.model.is_vae else None,
    'sparsity': lambda c: AE_ONLY if c.model.is_vae else None,
    'sparsity_weight': lambda c: 'weighs the --sparsity penalty, which is off' if c.model.sparsity is None else None,
    'kl_weight': lambda c: None if c.model.is_vae else VAE_ONLY,
    'kl_anneal': lambda c: None if c.model.is_vae else VAE_ONLY,
    'prior': lambda c: None if c.model.is_vae else VAE_ONLY,
    'iwae_k': lambda c: None if c.model.is_vae else VAE_ONLY,
    'dropout_p': lambda c: None if c.model.use_dropout else 'applies to --use_dropout only (BatchNorm has no dropout)',
    'bn_eps': lambda c: 'applies to BatchNorm, which --use_dropout has not' if c.model.use_dropout else None,
    'n_layers': sizes_from_n_layers,
    'max_hidden_size': sizes_from_n_layers,
    'noise_level': lambda c: None if c.model.noise else 'sets the level of --noise, which is off',
}


def architecture_rule(flag, rule=None):
    """A flag of ARCHITECTURE_FLAGS is refused where the architecture does not read it, then by its own rule."""
    def used(c):
        arch = ARCHITECTURES[c.model.arch]
        if flag not in arch.flags:
            reads = ', '.join(f'--{name}' for name in sorted(arch.flags))
            return f'does not apply to --arch {c.model.arch} ({f"it reads {reads}" if reads else "it has no Blocks"})'
        return rule(c) if rule else None
    return used


USED_ONLY_IF.update({flag: architecture_rule(flag, USED_ONLY_IF.get(flag)) for flag in ARCHITECTURE_FLAGS})
# The options of the parts apply to their part only (a prior's to a VAE's).
USED_ONLY_IF.update({option: (lambda c, kind=kind, name=name:
                              None if getattr(c.model, kind) == name and (kind != 'prior' or c.model.is_vae) else
                              f'applies to --{kind} {name} only')
                     for option, (kind, name, *_) in part_options().items()})
# Flags that only some runs use, told from the flags given.
USED_ONLY_WITHOUT = {'min_steps': ('n_epochs', 'sets the epochs when --n_epochs is left out')}


def refusal(c, given):
    """The reason, in one line, why the config c makes no sense, or why one of the flags given (their
    names) would do nothing in it; None when neither."""
    m = c.model
    batch_norm = 'use_dropout' in ARCHITECTURES[m.arch].flags and not m.use_dropout
    if PRIORS[m.prior].uses_inputs and (not m.is_vae or batch_norm):
        return (f'--prior {m.prior} needs --model vae and --use_dropout: BatchNorm would take the prior\'s inputs '
                f'into its batch statistics')
    if m.iwae_k > 1 and ({'kl_weight', 'kl_anneal'} & given):
        return '--iwae_k trains on the importance-weighted bound, which has no KL term to weigh or warm up'
    if m.gated and 'gated' in ARCHITECTURES[m.arch].flags and (m.tied or 'activation' in given):
        return '--gated takes neither --tied (a gated layer has two weights) nor --activation (the gate replaces it)'
    if c.data.binarize and not LIKELIHOODS[m.likelihood].takes_binary_pixels:
        return (f'--likelihood {m.likelihood} is a density of grayscale pixels; binary pixels (--binarize) take '
                f'--likelihood bernoulli or mse')
    if m.noise in ('masking', 'salt_pepper') and m.noise_level > 1:
        return f'--noise_level {m.noise_level}: --noise {m.noise} takes a share of the pixels, in (0, 1]'
    for name in sorted(given & USED_ONLY_WITHOUT.keys()):
        other, reason = USED_ONLY_WITHOUT[name]
        if other in given:
            return f'--{name} {reason}'
    for name in sorted(given & USED_ONLY_IF.keys()):
        reason = USED_ONLY_IF[name](c)
        if reason:
            return f'--{name} {reason}'
    return None


# Without --batch_size, an epoch has at least this many optimizer steps, and a batch at least
# MIN_FITTED_BATCH images (or all of them): BatchNorm's statistics over fewer are too noisy to train
# on (Wu and He 2018, Group Normalization, Fig. 1: its error rises quickly below 16 images a batch).
# On 64 training images, batches of 4 reconstructed worse than PCA-2, and batches of 16 better.
MIN_BATCHES_PER_EPOCH = 16
MIN_FITTED_BATCH = 16


def steps_per_epoch(n_train, batch_size):
    return math.ceil(n_train / batch_size)


def fit_length(config, given, n_train):
    """The config with the batch size and the epochs that the flags given leave out fitted to n_train
    training images: the defaults, or on a small data set a batch of a MIN_BATCHES_PER_EPOCH-th of the
    images (but no fewer than MIN_FITTED_BATCH) and epochs enough for --min_steps optimizer steps.
    Fashion-MNIST's 48,000 images keep the defaults."""
    t = config.training
    batch_size, n_epochs = t.batch_size, t.n_epochs
    if 'batch_size' not in given:
        batch_size = min(batch_size, max(min(MIN_FITTED_BATCH, n_train), n_train // MIN_BATCHES_PER_EPOCH))
    if 'n_epochs' not in given:
        n_epochs = max(n_epochs, math.ceil(t.min_steps / steps_per_epoch(n_train, batch_size)))
    return config.replace(batch_size=batch_size, n_epochs=n_epochs)


class Recipe(NamedTuple):
    """A config of docs/results.md: its flags beyond the defaults, what predict.py computes, and the
    samples per image of a VAE's importance-sampled -log p(x) (None: an AE's)."""
    changes: dict
    what: tuple = ('metrics',)
    iw_samples: int | None = None

    @property
    def config(self):
        return make_config(**self.changes)


# The binarized-data protocol of the likelihood literature (Burda et al. 2016; Tomczak and Welling
# 2018; Norouzi et al. 2020): a VAE of two gated hidden layers of 300 units and a 40-d code,
# 50,000 / 10,000 train / valid images, training images re-binarized every batch, the valid and
# test images binarized once; the model is chosen on the valid negative ELBO only.
BINARIZED_NET = dict(model='vae', binarize=True, gated=True, hidden_sizes=[300, 300], btl_size=40, train_ratio=.83334)
# The papers' schedule: Adam at lr 5e-4, batch 100, up to 2,000 epochs, stopped after 50 without a better
# valid negative ELBO, whose best epoch is kept; the KL weight warms up over 100 epochs.
PAPER_SCHEDULE = dict(batch_size=100, lr=5e-4, n_epochs=2000, patience=50)
# A schedule that fits an hour or two of 2 CPU cores: the learning rate doubled and annealed to 0 over a
# fixed number of epochs (cosine), an exponential moving average of the weights validated and saved,
# and a shorter KL warm-up. The VampPrior encodes its 500 pseudo-inputs at every step, whatever the
# batch: batches of 250 (learning rate scaled up) spend that pass on 2.5 times more images.
FAST_SCHEDULE = dict(batch_size=100, lr=1e-3, n_epochs=400, scheduler='cosine', ema=.999)
FAST_VAMP_SCHEDULE = dict(batch_size=250, lr=1.5e-3, n_epochs=300, scheduler='cosine', ema=.999)
VAMP = dict(prior='vamp', use_dropout=True, dropout_p=0.)
RECIPES = {
    'ae2': Recipe(dict(btl_size=2, optimizer='adamw', weight_decay=.01, bn_eps=1e-3, n_epochs=170, scheduler='cosine')),
    'ae30': Recipe(dict(btl_size=30, hidden_sizes=[1000, 500, 250], lr=3e-3, n_epochs=40, scheduler='cosine')),
    'vae20': Recipe(dict(model='vae', btl_size=20, hidden_sizes=[1024, 512], n_epochs=50, scheduler='cosine'),
                    iw_samples=100),
    'classic_vae20': Recipe(dict(model='vae', btl_size=20, hidden_sizes=[400], use_dropout=True, dropout_p=0.,
                                 n_epochs=50), iw_samples=100),
    'anomaly': Recipe(dict(btl_size=10, target_labels=[0, 1, 3, 8], n_epochs=20), what=('metrics', 'anomaly')),
    'binarized_vae': Recipe({**BINARIZED_NET, **PAPER_SCHEDULE, 'kl_anneal': 100}, iw_samples=5000),
    'binarized_vamp': Recipe({**BINARIZED_NET, **PAPER_SCHEDULE, **VAMP, 'kl_anneal': 100}, iw_samples=5000),
    'binarized_iwae': Recipe({**BINARIZED_NET, **PAPER_SCHEDULE, 'iwae_k': 5}, iw_samples=5000),
    'binarized_vae_fast': Recipe({**BINARIZED_NET, **FAST_SCHEDULE, 'kl_anneal': 20}, iw_samples=5000),
    'binarized_vamp_fast': Recipe({**BINARIZED_NET, **FAST_VAMP_SCHEDULE, **VAMP, 'kl_anneal': 20}, iw_samples=5000),
    'binarized_iwae_fast': Recipe({**BINARIZED_NET, **FAST_SCHEDULE, 'iwae_k': 5}, iw_samples=5000),
}
# The one-class protocol's model (oneclass.py): a convolutional AE, 128-d code, and --min_steps 750,
# 40 epochs of Fashion-MNIST's 4,800 training images of a class.
ONECLASS_RECIPE = Recipe(dict(arch='conv', hidden_sizes=[32, 64, 128], btl_size=128, min_steps=750))
