"""Property-based tests: random valid architectures (every --model, --arch, --n_layers,
--hidden_sizes, --btl_size, --use_dropout, --tied, --activation, --gated, the VAE's likelihoods,
priors and IWAE, with the regularizers, with and without bf16 autocast) train a step; random and
mutated bytes given to the IDX reader and to checkpoint loading fail only with the project's own
errors."""
import gzip
import os
import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import load_checkpoint, model_from_checkpoint
from config import DEFAULTS, USED_ONLY_IF, RunConfig, make_config, refusal
from data_loader import DataError, idx_bytes, read_idx
from distributions import LIKELIHOODS, PRIORS
from helpers import make_images
from model import ACTIVATIONS, BN_EPS, build_model
from trainer import forward_precision
from utils import CliError

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def architectures(draw):
    """A random combination of the architecture flags that train.py accepts."""
    model, arch = draw(st.sampled_from(['ae', 'vae'])), draw(st.sampled_from(['mlp', 'conv', 'lstm']))
    if arch == 'mlp':
        hidden_sizes = draw(st.none() | st.lists(st.integers(1, 300), min_size=1, max_size=4))
    else:  # channels or LSTM units: kept small, so each example stays fast
        hidden_sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    flags = dict(DEFAULTS, model=model, arch=arch, hidden_sizes=hidden_sizes, n_layers=draw(st.integers(1, 6)),
             btl_size=draw(st.integers(1, 40)), use_dropout=draw(st.booleans()),
             dropout_p=draw(st.floats(0, .9)), kl_weight=draw(st.floats(0, 4)),
             tied=draw(st.booleans()) if arch == 'mlp' else False,
             activation=draw(st.sampled_from(list(ACTIVATIONS))) if arch != 'lstm' else 'relu',
             noise=draw(st.sampled_from([None, 'gaussian', 'masking', 'salt_pepper'])),
             noise_level=draw(st.floats(.01, 1)),
             kl_anneal=draw(st.integers(0, 3)) if model == 'vae' else 0,
             likelihood=draw(st.sampled_from(list(LIKELIHOODS))),
             l1=draw(st.sampled_from([0., .01])) if model == 'ae' else 0.,
             sparsity=draw(st.sampled_from([None, .05])) if model == 'ae' else None, sparsity_weight=1.)
    flags['bn_eps'] = BN_EPS if flags['use_dropout'] or arch == 'lstm' else draw(st.sampled_from([BN_EPS, 1e-3]))
    if arch == 'mlp' and draw(st.booleans()):
        flags.update(gated=True, tied=False, activation='relu')
    if model == 'vae':
        priors = [name for name, prior in PRIORS.items() if flags['use_dropout'] or arch == 'lstm' or
                  not prior.uses_inputs]  # a prior with inputs of its own needs no BatchNorm
        flags.update(prior=draw(st.sampled_from(priors)), n_pseudo=draw(st.integers(1, 20)),
                     n_components=draw(st.integers(1, 5)))
        if draw(st.booleans()):
            flags.update(iwae_k=draw(st.integers(2, 4)), kl_weight=1., kl_anneal=0)
    # Flags this architecture would not use go back to their defaults, as if not given.
    # (until none is left: resetting one, such as --use_dropout, can leave another unused)
    while unused := {name: DEFAULTS[name] for name, rule in USED_ONLY_IF.items()
                     if rule(RunConfig.from_flags(flags)) and flags[name] != DEFAULTS[name]}:
        flags.update(unused)
    config = RunConfig.from_flags(flags)
    given = {name for name, value in config.flags().items() if value != DEFAULTS[name]}
    assert refusal(config, given) is None  # the draw keeps to the rules
    return config


@FUZZ
@given(config=architectures(), batch_size=st.integers(2, 9), amp=st.booleans())
def test_any_valid_architecture_builds_and_trains_a_step(config, batch_size, amp):
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 784)
    with forward_precision('cpu', amp):  # as the Trainer runs train.py --amp
        loss, parts = model.loss(x)
    # Under autocast too, the networks' bf16 outputs are turned into fp32 losses.
    assert all(v.dtype == torch.float32 for v in [loss, *parts.values()])
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.eval()
    assert model.encode(x).shape == (batch_size, config.model.btl_size)
    assert model(x).shape == (batch_size, 784)


def valid_idx_bytes():
    images, _ = make_images(2, seed=0)
    return idx_bytes(images)


@st.composite
def mutated(draw, original):
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(['flip', 'cut', 'insert']))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == 'flip' and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == 'cut':
            del data[position:position + draw(st.integers(1, 64))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def read_or_data_error(path):
    try:
        result = read_idx(str(path))
    except DataError:
        return None
    assert result.dtype == torch.uint8
    return result


@FUZZ
@given(data=st.binary(max_size=300) | mutated(valid_idx_bytes()))
def test_idx_reader_on_random_and_mutated_bytes(tmp_path, data):
    plain = tmp_path / 'x-idx3-ubyte'
    plain.write_bytes(data)
    read_or_data_error(plain)
    compressed = tmp_path / 'x-idx3-ubyte.gz'
    compressed.write_bytes(gzip.compress(data))
    read_or_data_error(compressed)


@FUZZ
@given(data=mutated(gzip.compress(valid_idx_bytes())))
def test_idx_reader_on_mutated_gzip_archives(tmp_path, data):
    path = tmp_path / 'x-idx3-ubyte.gz'
    path.write_bytes(data)
    read_or_data_error(path)


def small_checkpoint_bytes():
    config = make_config(model='vae', hidden_sizes=[4], btl_size=2)
    buffer = io.BytesIO()
    torch.save({'model': build_model(config).state_dict(), **config.saved(), 'history': []}, buffer)  # today's layout
    return buffer.getvalue()


CHECKPOINT = small_checkpoint_bytes()


@FUZZ
@given(data=st.binary(max_size=300) | mutated(CHECKPOINT))
def test_checkpoint_loading_on_random_and_mutated_bytes(tmp_path, data):
    path = tmp_path / 'fuzzed.pth'
    path.write_bytes(data)
    try:
        model_from_checkpoint(load_checkpoint(str(path)), str(path))
    except CliError:
        pass
