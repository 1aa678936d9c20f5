"""No flag of train.py is silently ignored: every model flag, tried with every model and every
architecture, either changes the model that is built or is refused in one line."""
import math

import pytest
import torch

import model
import flags
from checkpoint import model_from_checkpoint
from helpers import TINY, train_in_process
from model import ARCHITECTURES, build_model

# A value other than its default for each flag that shapes the model or its loss ([] for a switch).
OTHER_VALUES = {
    'n_layers': ['2'], 'max_hidden_size': ['700'], 'hidden_sizes': ['8', '4'], 'btl_size': ['3'], 'use_dropout': [],
    'dropout_p': ['0.1'], 'bn_eps': ['1e-3'], 'prior': ['vamp'], 'n_pseudo': ['7'], 'iwae_k': ['2'], 'gated': [],
    'likelihood': ['cbernoulli'], 'kl_weight': ['2'], 'kl_anneal': ['3'], 'activation': ['tanh'], 'tied': [],
    'noise': ['gaussian'], 'noise_level': ['0.2'], 'l1': ['0.1'], 'sparsity': ['0.05'], 'sparsity_weight': ['2'],
}


def signature(model):
    """What tells two models apart: their layers (sizes, eps, dropout, activations), the shapes of
    their tensors and the settings every module holds (noise, weights of the loss terms, ...)."""
    settings = sorted((name, key, value) for name, module in model.named_modules()
                      for key, value in vars(module).items()
                      if not key.startswith('_') and key != 'training'
                      and isinstance(value, (int, float, str, type(None))))
    shapes = sorted((name, tuple(tensor.shape)) for name, tensor in model.state_dict().items())
    return repr(model), shapes, settings


def parsed(argv, capsys):
    """train.py's config for argv, or the one line with which it refused them."""
    try:
        return flags.parse(['--model_fn', 'm.pth', *argv])[0], None
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
        return None, err


@pytest.mark.parametrize('model_name', ['ae', 'vae'])
@pytest.mark.parametrize('arch', list(ARCHITECTURES))
def test_every_model_flag_changes_the_model_or_is_refused(model_name, arch, capsys):
    base = ['--model', model_name, '--arch', arch]
    config, refusal = parsed(base, capsys)
    assert refusal is None
    with torch.device('meta'):
        plain = signature(build_model(config))
    accepted = 0
    for flag, values in OTHER_VALUES.items():
        config, refusal = parsed([*base, f'--{flag}', *values], capsys)
        if refusal is not None:
            assert f'--{flag}' in refusal  # the line names the flag
            continue
        with torch.device('meta'):
            assert signature(build_model(config)) != plain, f'--{flag} was accepted with {base} and changed nothing'
        accepted += 1
    assert accepted >= 5  # most flags apply to every combination


@pytest.mark.parametrize('argv, match', [
    (['--arch', 'conv', '--n_layers', '3'], '--n_layers does not apply to --arch conv'),
    (['--arch', 'lstm', '--use_dropout'], '--use_dropout does not apply to --arch lstm (it has no Blocks)'),
    (['--hidden_sizes', '64', '--n_layers', '3'], '--n_layers is overridden by --hidden_sizes'),
    (['--hidden_sizes', '64', '--max_hidden_size', '512'], '--max_hidden_size is overridden by --hidden_sizes'),
    (['--arch', 'lstm', '--max_hidden_size', '512'], '--max_hidden_size does not apply to --arch lstm'),
    (['--dropout_p', '0.5'], '--dropout_p applies to --use_dropout only'),
    (['--model', 'vae', '--use_dropout', '--n_pseudo', '10'], '--n_pseudo applies to --prior vamp only'),
    (['--noise_level', '0.5'], '--noise_level sets the level of --noise, which is off'),
    (['--model', 'vae', '--n_components', '3'], '--n_components applies to --prior mog only'),
    (['--prior', 'mog'], '--prior applies to --model vae only'),
    (['--sparsity_weight', '2'], '--sparsity_weight weighs the --sparsity penalty, which is off'),
    (['--model', 'vae', '--kl_weight', '0.5', '--iwae_k', '3'], 'no KL term to weigh or warm up'),
])
def test_flags_that_the_model_would_ignore_are_refused_by_name(argv, match, capsys):
    config, refusal = parsed(argv, capsys)
    assert config is None and match in refusal


def test_a_new_architecture_is_a_builder_and_one_registry_line(data_dir, tmp_path, capsys, monkeypatch):
    """A linear architecture (one Linear each way, reading none of the architecture flags) added to
    ARCHITECTURES alone: train.py offers it in --help, trains and reloads it, and refuses the flags
    it does not read."""
    def build_linear(m, encoder_out_size):
        input_size = math.prod(m.image_shape)
        return torch.nn.Linear(input_size, encoder_out_size), torch.nn.Linear(m.btl_size, input_size)

    monkeypatch.setitem(model.ARCHITECTURES, 'linear', model.Architecture('one Linear each way', build_linear,
                                                                          frozenset()))
    assert 'linear: one Linear each way' in ' '.join(flags.define_argparser().format_help().split())
    model_fn = str(tmp_path / 'linear.pth')
    checkpoint = train_in_process('--model_fn', model_fn, '--data_dir', data_dir, '--arch', 'linear', *TINY)
    rebuilt = model_from_checkpoint(checkpoint, model_fn)
    assert [type(m).__name__ for m in rebuilt.encoder.modules()] == ['Linear']
    _, refusal = parsed(['--arch', 'linear', '--activation', 'tanh'], capsys)
    assert '--activation does not apply to --arch linear (it has no Blocks)' in refusal
