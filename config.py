"""The default configuration of the models, of training and of the data, written once, as three
typed dataclasses: ModelConfig (what rebuilds the network), TrainingConfig and DataConfig. A
checkpoint saves the three apart; the code passes a run's config around as one dict of flags
(DEFAULTS' keys), which merge_config builds and wrong_type checks against the fields' types.

train.py's flags take their defaults from here, bench.py, recipes.py and the tests build their
configurations from here, and a checkpoint written before a flag existed is completed from
here (every flag that came later defaults to what those checkpoints were made with, or `upgraded`
says what they were made with). The recipes of docs/results.md and of the one-class protocol are
here too, as train.py's flags, for recipes.py, oneclass.py and bench.py alike.
"""
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from distributions import DEFAULT_LIKELIHOOD, part_options


@dataclass
class ModelConfig:
    """What rebuilds the network and its loss (with the VAE parts' own options, PART_OPTIONS)."""
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
    likelihood: str | None = None         # the decoder's distribution, a name of distributions.LIKELIHOODS; None: the model's own
    kl_weight: float = 1.
    kl_anneal: int = 0
    prior: str = 'normal'                 # VAE: a name of distributions.PRIORS, N(0, I) by default
    iwae_k: int = 1                       # VAE: train on the importance-weighted bound with this many samples (1: the ELBO)
    noise: str | None = None              # 'gaussian', 'masking' or 'salt_pepper'
    noise_level: float = .3
    l1: float = 0.
    sparsity: float | None = None
    sparsity_weight: float = 1.
    # (channels, height, width) of the input: not a flag, train.py sets it from the data
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])


@dataclass
class TrainingConfig:
    n_epochs: int = 20                    # when not given: this, or more epochs for min_steps on a small data set
    batch_size: int = 256                 # when not given: this, or less on a small data set (train.py, fit_length)
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


@dataclass
class DataConfig:
    dataset: str = 'mnist'
    data_dir: str = './data'
    target_labels: list[int] | None = None  # class indices
    image_size: list[int] | None = None     # [height, width] to resize the images to
    channels: int | None = None             # 1 (gray) or 3 (colour) to convert the images to
    binarize: bool = False                  # pixels as Bernoulli draws: afresh for every training batch, once for the others


MODEL, TRAINING, DATA = (asdict(part()) for part in (ModelConfig, TrainingConfig, DataConfig))

# The binarized-data protocol of the likelihood literature (Burda et al. 2016; Tomczak and Welling
# 2018; Norouzi et al. 2020): a VAE of two gated hidden layers of 300 units and a 40-d code,
# 50,000 / 10,000 train / valid images, training images re-binarized every batch, the valid and
# test images binarized once; the model is chosen on the valid negative ELBO only.
BINARIZED_NET = ('--model vae --binarize --gated --hidden_sizes 300 300 --btl_size 40 --train_ratio 0.83334')
# The papers' schedule: Adam at lr 5e-4, batch 100, up to 2,000 epochs, stopped after 50 without a better
# valid negative ELBO, whose best epoch is kept; the KL weight warms up over 100 epochs.
PAPER_SCHEDULE = '--batch_size 100 --lr 5e-4 --n_epochs 2000 --patience 50'
# A schedule that fits an hour or two of 2 CPU cores: the learning rate doubled and annealed to 0 over a
# fixed number of epochs (cosine), an exponential moving average of the weights validated and saved,
# and a shorter KL warm-up. The VampPrior encodes its 500 pseudo-inputs at every step, whatever the
# batch: batches of 250 (learning rate scaled up) spend that pass on 2.5 times more images.
FAST_SCHEDULE = '--batch_size 100 --lr 1e-3 --n_epochs 400 --scheduler cosine --ema 0.999'
FAST_VAMP_SCHEDULE = '--batch_size 250 --lr 1.5e-3 --n_epochs 300 --scheduler cosine --ema 0.999'
VAMP = '--prior vamp --use_dropout --dropout_p 0'
# name -> (train.py flags beyond the defaults of config.py, what predict.py computes, the samples
# per image of a VAE's importance-sampled -log p(x))
RECIPES = {
    'ae2': ('--btl_size 2 --optimizer adamw --weight_decay 0.01 --bn_eps 1e-3 --n_epochs 170 --scheduler cosine',
            ['metrics'], None),
    'ae30': ('--btl_size 30 --hidden_sizes 1000 500 250 --lr 3e-3 --n_epochs 40 --scheduler cosine', ['metrics'],
             None),
    'vae20': ('--model vae --btl_size 20 --hidden_sizes 1024 512 --n_epochs 50 --scheduler cosine', ['metrics'], 100),
    'classic_vae20': ('--model vae --btl_size 20 --hidden_sizes 400 --use_dropout --dropout_p 0 --n_epochs 50',
                      ['metrics'], 100),
    'anomaly': ('--btl_size 10 --target_labels 0 1 3 8 --n_epochs 20', ['metrics', 'anomaly'], None),
    'binarized_vae': (f'{BINARIZED_NET} {PAPER_SCHEDULE} --kl_anneal 100', ['metrics'], 5000),
    'binarized_vamp': (f'{BINARIZED_NET} {PAPER_SCHEDULE} {VAMP} --kl_anneal 100', ['metrics'], 5000),
    'binarized_iwae': (f'{BINARIZED_NET} {PAPER_SCHEDULE} --iwae_k 5', ['metrics'], 5000),
    'binarized_vae_fast': (f'{BINARIZED_NET} {FAST_SCHEDULE} --kl_anneal 20', ['metrics'], 5000),
    'binarized_vamp_fast': (f'{BINARIZED_NET} {FAST_VAMP_SCHEDULE} {VAMP} --kl_anneal 20', ['metrics'], 5000),
    'binarized_iwae_fast': (f'{BINARIZED_NET} {FAST_SCHEDULE} --iwae_k 5', ['metrics'], 5000),
}
# The one-class protocol's model (oneclass.py): a convolutional AE, 128-d code, and --min_steps 750,
# 40 epochs of Fashion-MNIST's 4,800 training images of a class.
ONECLASS_RECIPE = '--arch conv --hidden_sizes 32 64 128 --btl_size 128 --min_steps 750'

# The options of the VAE's parts (--n_pseudo of the VampPrior, ...) are declared by the parts themselves.
PART_OPTIONS = {name: default for name, (_, _, _, default, _) in part_options().items()}

DEFAULTS = {**MODEL, **PART_OPTIONS, **TRAINING, **DATA}
# The type of every key: a field's, or a part option's, that of its default.
TYPES = {**{f.name: f.type for part in (ModelConfig, TrainingConfig, DataConfig) for f in fields(part)},
         **{name: type(default) for name, default in PART_OPTIONS.items()}}
# A checkpoint keeps its config in three parts: the model's (all that rebuilds the network and its
# loss), the training's and the data's. The flags of one run (--model_fn, --gpu_id, --verbose,
# --resume, --overwrite) are not saved.
SAVED_PARTS = {'model_config': [*MODEL, *PART_OPTIONS], 'training_config': list(TRAINING), 'data_config': list(DATA)}


def make_config(**changes):
    """The default configuration with changes, e.g. make_config(model='vae', btl_size=20).
    A name that is not a flag is refused, so that a typo cannot pass silently."""
    unknown = sorted(changes.keys() - DEFAULTS.keys())
    if unknown:
        raise KeyError(f'not a configuration key: {unknown[0]}')
    return {**DEFAULTS, **changes}


def merge_config(flags, saved=None):
    """The config of a run: the defaults, under the config saved in a checkpoint (when resuming or
    reading an older checkpoint), under the flags given (a flag that is None was not given); a
    likelihood left out is the model's own (DEFAULT_LIKELIHOOD)."""
    given = {name: value for name, value in flags.items() if name in DEFAULTS and value is not None}
    config = {**DEFAULTS, **upgraded(saved or {}), **given}
    if config['likelihood'] is None:
        config['likelihood'] = DEFAULT_LIKELIHOOD[config['model']]
    return config


def wrong_type(config):
    """The first value of config that is not of its key's type, in words (an int passes for a float,
    a bool for nothing but a bool); None when every value is."""
    for name, value in config.items():
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


def saved_parts(config):
    """A run's config as a checkpoint saves it: {'model_config': {...}, 'training_config': ..., 'data_config': ...}."""
    return {part: {name: config[name] for name in names} for part, names in SAVED_PARTS.items()}


def saved_config(checkpoint):
    """The config that a checkpoint saved, as one dict of flags: from its three parts, or from the
    one dict of every flag ('config') that checkpoints saved before them."""
    if 'config' in checkpoint:
        return checkpoint['config']
    return {name: value for part in SAVED_PARTS for name, value in checkpoint[part].items()}


def upgraded(saved):
    """A config saved by older code in today's keys: the AutoEncoder's loss, 'mse' (or None) or 'bce',
    is its likelihood, 'mse' or 'bernoulli' (its saved likelihood was the VAE's default, unused); its
    --n_layers sizes fell from the input's size, however large (max_hidden_size None)."""
    if not saved:
        return saved
    saved = {'max_hidden_size': None, **saved}
    if 'loss' in saved:
        loss = saved.pop('loss')
        if saved.get('model', 'ae') == 'ae':
            saved['likelihood'] = 'bernoulli' if loss == 'bce' else 'mse'
    return saved
