"""The default configuration of the models, of training and of the data, written once.

train.py's flags take their defaults from here, bench.py, recipes.py and the tests build their
configurations from here, and a checkpoint written before a flag existed is completed from
here (every flag that came later defaults to what those checkpoints were made with).
"""

MODEL = dict(
    model='ae',          # 'ae' or 'vae'
    arch='mlp',          # 'mlp', 'conv' or 'lstm'
    n_layers=5,          # hidden layers per side when hidden_sizes is None
    hidden_sizes=None,   # explicit encoder sizes (conv: channels; lstm: units)
    btl_size=10,
    use_dropout=False,   # Dropout instead of BatchNorm in every Block
    dropout_p=.3,
    bn_eps=1e-5,         # PyTorch's default
    activation='relu',
    tied=False,
    gated=False,         # --arch mlp: hidden layers of gated units, h = (W1 x) * sigmoid(W2 x)
    loss=None,           # AutoEncoder: 'mse' or 'bce'; None is 'mse' (the VAE is always Bernoulli)
    kl_weight=1.,
    kl_anneal=0,
    likelihood='bernoulli',  # VAE: 'bernoulli' or 'cbernoulli' (continuous Bernoulli)
    prior='normal',      # VAE: 'normal', N(0, I), or 'vamp', the VampPrior
    n_pseudo=500,        # VAE with the VampPrior: its pseudo-inputs
    iwae_k=1,            # VAE: train on the importance-weighted bound with this many samples (1: the ELBO)
    noise=None,          # 'gaussian', 'masking' or 'salt_pepper'
    noise_level=.3,
    l1=0.,
    sparsity=None,
    sparsity_weight=1.,
    image_shape=[1, 28, 28],  # (channels, height, width) of the input: not a flag, train.py sets it from the data
)

TRAINING = dict(
    n_epochs=20,
    batch_size=256,
    train_ratio=.8,
    optimizer='adam',
    lr=1e-3,
    weight_decay=0.,
    scheduler='none',
    patience=0,          # stop after this many epochs without a better valid loss (0: never)
    ema=0.,              # decay of an exponential moving average of the weights, which is validated and saved (0: none)
    amp=False,
    compile=False,
    seed=1,
)

DATA = dict(
    dataset='mnist',
    data_dir='./data',
    target_labels=None,  # class indices
    image_size=None,     # [height, width] to resize the images to
    channels=None,       # 1 (gray) or 3 (colour) to convert the images to
    binarize=False,      # pixels as Bernoulli draws: afresh for every training batch, once for the others
)

DEFAULTS = {**MODEL, **TRAINING, **DATA}


def make_config(**changes):
    """The default configuration with changes, e.g. make_config(model='vae', btl_size=20).
    A name that is not a flag is refused, so that a typo cannot pass silently."""
    unknown = sorted(changes.keys() - DEFAULTS.keys())
    if unknown:
        raise KeyError(f'not a configuration key: {unknown[0]}')
    return {**DEFAULTS, **changes}
