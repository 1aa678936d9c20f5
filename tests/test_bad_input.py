"""Bad input to every script, one table each: a command line that must end with exit status 2 and one
line on stderr, no traceback, naming the flag or the file at fault, before anything is written. The
tables hold what each line must name, not its wording, so that a line can be rephrased freely."""
import os

import pytest
import torch

import bench
import data_loader
import oneclass
import predict
import recipes
import train
from helpers import TINY, expect_usage_error, run_script, train_in_process, write_dataset


def no_other_copies(monkeypatch):
    """Fashion-MNIST is looked for in --data_dir only: neither downloaded nor found in a system folder."""
    monkeypatch.setattr(data_loader, '_download', lambda dataset, data_dir: False)
    monkeypatch.setitem(data_loader.DATASETS, 'fashion_mnist', ('FashionMNIST', 'FashionMNIST/raw', []))


# train.py: the flags after --model_fn and --data_dir, and what the line names.
TRAIN = [
    (['--btl_size', '0'], '--btl_size'),
    (['--btl_size', 'two'], '--btl_size'),
    (['--n_layers', '0'], '--n_layers'),
    (['--hidden_sizes', '64', '0'], '--hidden_sizes'),
    (['--train_ratio', '1'], '--train_ratio'),
    (['--train_ratio', '0'], '--train_ratio'),
    (['--batch_size', '0'], '--batch_size'),
    (['--n_epochs', '0'], '--n_epochs'),
    (['--dropout_p', '1'], '--dropout_p'),
    (['--dropout_p', '-0.1'], '--dropout_p'),
    (['--model', 'gan'], '--model'),
    (['--loss', 'bce'], '--loss'),
    (['--target_labels', '3', '10'], '--target_labels 10'),
    (['--gpu_id', str(torch.cuda.device_count())], '--gpu_id'),
    (['--btl_size', '784'], '--btl_size 784'),
    (['--model', 'vae', '--l1', '.1'], '--l1'),
    (['--model', 'vae', '--sparsity', '.1'], '--sparsity'),
    (['--kl_anneal', '3'], '--kl_anneal'),
    (['--arch', 'conv', '--tied'], '--tied'),
    (['--arch', 'lstm', '--activation', 'tanh'], '--activation'),
    (['--use_dropout', '--bn_eps', '1e-3'], '--bn_eps'),
    (['--arch', 'lstm', '--bn_eps', '1e-3'], '--bn_eps'),
    (['--noise', 'masking', '--noise_level', '1.5'], '--noise_level'),
    (['--activation', 'swish'], '--activation'),
    (['--binarize', '--likelihood', 'cbernoulli'], '--likelihood cbernoulli'),
    (['--likelihood', 'gaussian', '--binarize'], '--likelihood gaussian'),
    (['--model', 'vae', '--likelihood', 'cbernoulli', '--binarize'], '--likelihood cbernoulli'),
    (['--gated', '--arch', 'conv'], '--gated'),
    (['--gated', '--tied'], '--tied'),
    (['--gated', '--activation', 'tanh'], '--activation'),
    (['--prior', 'vamp'], '--prior vamp'),
    (['--model', 'vae', '--prior', 'vamp'], '--prior vamp'),
    (['--iwae_k', '5'], '--iwae_k'),
    (['--model', 'vae', '--iwae_k', '5', '--kl_anneal', '3'], '--iwae_k'),
    (['--model', 'vae', '--iwae_k', '0'], '--iwae_k'),
    (['--n_pseudo', '3'], '--n_pseudo'),
    (['--n_epochs', '5', '--min_steps', '100'], '--min_steps'),
    (['--no_log', '--log_every_n_steps', '5'], '--log_every_n_steps'),
    (['--resume', '--overwrite'], '--overwrite'),
    (['--dataset', 'fashion_mnist', '--data_dir', '/nonexistent'], '/nonexistent'),
    (['--dataset', 'folder', '--data_dir', '/nonexistent'], '/nonexistent'),
]


@pytest.mark.parametrize('flags, names', TRAIN)
def test_train_py(flags, names, data_dir, tmp_path, capsys, monkeypatch):
    no_other_copies(monkeypatch)
    model_fn = tmp_path / 'keep.pth'
    model_fn.write_bytes(b'an earlier checkpoint')
    argv = ['--model_fn', str(model_fn), '--data_dir', data_dir, '--n_epochs', '1', '--verbose', '0', '--overwrite']
    expect_usage_error(train.main, 'train.py', argv + flags, capsys, names)
    assert model_fn.read_bytes() == b'an earlier checkpoint' and os.listdir(tmp_path) == ['keep.pth']


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """A checkpoint of an AutoEncoder with a 3-d code, trained for 3 epochs."""
    model_fn = str(tmp_path_factory.mktemp('trained') / 'ae3.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, '--btl_size', '3', '--no_log', *TINY)
    return model_fn


# train.py on a checkpoint that exists: the flags after --model_fn, and what the line names.
TRAIN_AGAIN = [
    ([], 'keep.pth'),  # neither --resume nor --overwrite
    (['--resume', '--btl_size', '4'], '--btl_size'),
    (['--resume', '--lr', '0.1'], '--lr'),
    (['--resume', '--n_epochs', '3'], 'keep.pth'),  # holds its 3 epochs already
]


@pytest.mark.parametrize('flags, names', TRAIN_AGAIN)
def test_train_py_on_an_existing_checkpoint(flags, names, trained, tmp_path, capsys):
    model_fn = tmp_path / 'keep.pth'
    model_fn.write_bytes(open(trained, 'rb').read())
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(model_fn), '--no_log', *flags], capsys, names)
    assert model_fn.read_bytes() == open(trained, 'rb').read() and os.listdir(tmp_path) == ['keep.pth']


def bad_checkpoint(kind, trained, path):
    """Writes a checkpoint that predict.py must refuse to path."""
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'text':
        path.write_bytes(b'hello, I am not a checkpoint')
    elif kind == 'truncated':
        data = open(trained, 'rb').read()
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'other_dict':
        torch.save({'state_dict': {}}, path)
    elif kind == 'runs_code':
        class Payload:
            def __reduce__(self):
                return (open, (str(path) + '.payload-ran', 'w'))  # would create a file when unpickled
        torch.save({'model': Payload(), 'config': {}, 'history': []}, path)
    elif kind != 'missing':
        checkpoint = torch.load(trained, weights_only=True)
        checkpoint['model_config'].update({'bad_weights': {'btl_size': 5}, 'huge_config': {'hidden_sizes': [10 ** 8]},
                                           'mistyped_config': {'btl_size': '2'}}[kind])
        torch.save(checkpoint, path)


# predict.py: a checkpoint that it cannot read (bad_checkpoint), or flags it refuses with a good one;
# the line names the checkpoint, or the flag.
PREDICT = [(kind, [], 'bad.pth') for kind in ('missing', 'empty', 'text', 'truncated', 'other_dict', 'runs_code',
                                               'bad_weights', 'mistyped_config',
                                               'huge_config')] + [  # 313 GB, were it built before the check
    (None, ['--what', 'boundary'], '--what boundary'),
    (None, ['--what', 'interp', '--interp', '0', '100'], '--interp 100'),
    (None, ['--what', 'interp', '--interp_classes', '1', '12'], '--interp_classes 12'),
    (None, ['--what', 'pictures'], '--what'),
    (None, ['--iw_samples', '10'], '--iw_samples'),
    (None, ['--dataset', 'folder', '--data_dir', '/nonexistent'], '/nonexistent'),
]


@pytest.mark.parametrize('kind, flags, names', PREDICT)
def test_predict_py(kind, flags, names, trained, tmp_path, capsys):
    model_fn = tmp_path / 'bad.pth'
    if kind is None:
        model_fn.write_bytes(open(trained, 'rb').read())
    else:
        bad_checkpoint(kind, trained, model_fn)
    before = os.listdir(tmp_path)
    argv = ['--model_fn', str(model_fn), '--gpu_id', '-1', '--out_dir', str(tmp_path / 'out'), *flags]
    expect_usage_error(predict.main, 'predict.py', argv, capsys, names)
    assert os.listdir(tmp_path) == before  # nothing written, nothing run


# oneclass.py: its flags and those it passes through to train.py, and what the line names.
ONECLASS = [
    (['--classes', '10'], '--classes 10'),
    (['--scores', 'neg_elbo'], '--scores neg_elbo'),
    (['--target_labels', '3'], '--target_labels'),
    (['--model_fn', 'x.pth'], '--model_fn'),
    (['--lr', '-1'], '--lr'),
    (['--arch', 'lstm', '--tied'], '--tied'),
    (['--data_dir', '/nonexistent'], '/nonexistent'),
]


@pytest.mark.parametrize('flags, names', ONECLASS)
def test_oneclass_py(flags, names, tmp_path, capsys, monkeypatch):
    no_other_copies(monkeypatch)
    data = tmp_path / 'data'
    write_dataset(data / 'FashionMNIST' / 'raw', n_train=100, n_test=20)
    argv = ['--data_dir', str(data), '--out_dir', str(tmp_path / 'o'), '--classes', '0', '--gpu_id', '-1', *flags]
    expect_usage_error(oneclass.main, 'oneclass.py', argv, capsys, names)
    assert not (tmp_path / 'o').exists()


# recipes.py and bench.py: their own flags, and what the line names.
RECIPES = [
    (['--recipes', 'ae3'], '--recipes'),
    (['--recipe_epochs', '0'], '--recipe_epochs'),
    (['--gpu_id', str(torch.cuda.device_count())], '--gpu_id'),
]
BENCH = [
    (['--n_epochs', '1'], '--n_epochs'),
    (['--batch_size', 'all'], '--batch_size'),
    (['--gpu_id', str(torch.cuda.device_count())], '--gpu_id'),
]


@pytest.mark.parametrize('script, flags, names', [('recipes.py', *case) for case in RECIPES] +
                                                [('bench.py', *case) for case in BENCH])
def test_recipes_py_and_bench_py(script, flags, names, tmp_path, capsys, monkeypatch):
    main = {'recipes.py': recipes.main, 'bench.py': bench.main}[script]
    monkeypatch.chdir(tmp_path)
    expect_usage_error(main, script, ['--gpu_id', '-1', *flags] if '--gpu_id' not in flags else flags, capsys, names)
    assert os.listdir(tmp_path) == []


def test_a_refusal_through_the_real_command_line(tmp_path):
    result = run_script('train.py', '--model_fn', str(tmp_path / 'x.pth'), '--btl_size', '0')
    assert result.returncode == 2 and result.stderr.startswith('train.py: error: ') and '--btl_size' in result.stderr
    result = run_script('predict.py', '--model_fn', str(tmp_path / 'missing.pth'))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f'predict.py: error: {tmp_path / "missing.pth"}: no such checkpoint file']
