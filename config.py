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
    loss=None,           # AutoEncoder: 'mse' or 'bce'; None is 'mse' (the VAE is always Bernoulli)
    kl_weight=1.,
    kl_anneal=0,
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
)

DEFAULTS = {**MODEL, **TRAINING, **DATA}


def make_config(**changes):
    """The default configuration with changes, e.g. make_config(model='vae', btl_size=20).
    A name that is not a flag is refused, so that a typo cannot pass silently."""
    unknown = sorted(changes.keys() - DEFAULTS.keys())
    if unknown:
        raise KeyError(f'not a configuration key: {unknown[0]}')
    return {**DEFAULTS, **changes}
