"""train.py and predict.py through their command lines, on tiny generated IDX data."""
import os
import re

from dataclasses import fields

import pytest
import torch

import analysis
import predict
import train
from config import DataConfig, ModelConfig, TrainingConfig
from checkpoint import load_checkpoint, resumable_flags
from data_loader import load_dataset, split_train_valid
from helpers import TINY, expect_usage_error, printed_losses, run_script
from model import build_model
from trainer import validate
from utils import run_cli


@pytest.fixture(scope='module', params=['ae', 'vae'])
def trained(request, data_dir, tmp_path_factory):
    model_fn = str(tmp_path_factory.mktemp(request.param) / f'{request.param}.pth')
    threads = ['--threads', '1'] if request.param == 'vae' else []  # torch's own choice for the AE
    result = run_script('train.py', '--model_fn', model_fn, '--model', request.param, '--btl_size', '2',
                        '--data_dir', data_dir, *TINY, *threads)
    assert result.returncode == 0, result.stderr
    return model_fn, result


def test_train_prints_a_summary_and_the_epochs(trained):
    _, result = trained
    threads = '1 thread' if trained[0].endswith('vae.pth') else r'\d+ threads?'
    assert re.search(rf'^(AutoEncoder|VAE): [\d,]+ parameters on cpu \({threads}\)$', result.stdout, re.M)
    assert 'Linear(in_features=784' not in result.stdout  # the whole model only with --verbose 2
    epoch_line = next(line for line in result.stdout.splitlines() if line.startswith('epoch 3: train loss='))
    # each number once: the AutoEncoder's loss is its reconstruction, the VAE's has two parts
    if trained[0].endswith('vae.pth'):
        assert re.search(r'train loss=[\d.]+ recon=[\d.]+ kl=[\d.]+ \| valid loss=[\d.]+ recon=[\d.]+ kl=', epoch_line)
    else:
        assert re.fullmatch(r'epoch 3: train loss=[\d.]+ \| valid loss=[\d.]+( \(best\))?', epoch_line)


def test_verbose_2_prints_the_whole_model_and_the_optimizer(data_dir, tmp_path, capsys):
    run_cli(lambda: train.main(['--model_fn', str(tmp_path / 'm.pth'), '--data_dir', data_dir, *TINY, '--n_epochs', '1',
                                '--verbose', '2']), 'train.py')
    out = capsys.readouterr().out
    assert 'Linear(in_features=784, out_features=64' in out and 'Adam (' in out
    assert re.search(r'^AutoEncoder: [\d,]+ parameters on cpu \(\d+ threads?\)$', out, re.M)
    assert 'epoch 1: train loss=' in out


def test_checkpoint_loads_with_weights_only(trained):
    model_fn, _ = trained
    checkpoint = torch.load(model_fn, weights_only=True)
    assert set(checkpoint) == {'model', 'opt', 'model_config', 'training_config', 'data_config', 'history', 'last'}
    assert set(checkpoint['last']) == {'model', 'scheduler', 'rng', 'average'}
    # the config in its parts, without run-only flags such as --model_fn
    for part, kind in (('model_config', ModelConfig), ('training_config', TrainingConfig), ('data_config', DataConfig)):
        assert set(checkpoint[part]) == {f.name for f in fields(kind)}
    assert checkpoint['model_config']['btl_size'] == 2 and checkpoint['model_config']['hidden_sizes'] == [64, 32]
    assert checkpoint['training_config']['n_epochs'] == 3
    assert [h['epoch'] for h in checkpoint['history']] == [1, 2, 3]
    assert 'state' in checkpoint['opt']
    assert not [f for f in os.listdir(os.path.dirname(model_fn)) if f.endswith('.tmp')]


def test_rebuilt_model_reproduces_the_best_valid_loss(trained, data_dir):
    model_fn, _ = trained
    checkpoint = load_checkpoint(model_fn)
    config = checkpoint['config']
    model = build_model(config)
    model.load_state_dict(checkpoint['model'])
    images, _ = load_dataset('mnist', data_dir, train=True, download=False)
    _, valid_indices = split_train_valid(len(images), config.training.train_ratio, config.training.seed)
    best = min(h['valid_loss'] for h in checkpoint['history'])
    assert validate(model, images, valid_indices)['loss'] == pytest.approx(best, rel=1e-5)


def test_predict_evaluates_the_test_set_and_writes_figures(trained, data_dir, tmp_path):
    model_fn, _ = trained
    result = run_script('predict.py', '--model_fn', model_fn, '--out_dir', str(tmp_path))
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(model_fn)
    model = build_model(checkpoint['config'])
    model.load_state_dict(checkpoint['model'])
    test_images, _ = load_dataset('mnist', data_dir, train=False, download=False)
    scores = analysis.image_scores(model, test_images)
    expected = {name: value.mean().item() for name, value in analysis.own_losses(scores, model.has_prior).items()}
    # the same losses as validation computes them, codes drawn from the same seed
    assert validate(model, test_images)['recon'] == pytest.approx(scores['recon'].mean().item(), rel=1e-5)
    printed = printed_losses(result.stdout, 'test, per image:')
    assert printed.keys() == expected.keys()
    for name in expected:
        assert printed[name] == pytest.approx(expected[name], abs=1e-4)

    written = re.findall(r'^wrote (.+)$', result.stdout, re.M)
    names = {os.path.basename(p) for p in written}
    assert names == {'reconstructions.png', 'latent.png', 'boundary.png', 'manifold.png', 'samples.png', 'samples.npz',
                     'interp.png', 'anomaly_hist.png', 'anomalies.png', 'metrics.json',
                     'curves.png'}  # --what's default
    for path in written:
        if path.endswith('.png'):
            with open(path, 'rb') as f:
                assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_predict_default_out_dir_is_beside_the_checkpoint(trained):
    model_fn, _ = trained
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--what', 'recon']), 'predict.py')
    assert os.path.isfile(os.path.splitext(model_fn)[0] + '_predict/reconstructions.png')


def test_target_labels_keep_only_those_classes(data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--data_dir', data_dir, '--target_labels', '1', '7',
                                '--verbose', '0', *TINY[:-4], '--n_epochs', '1']), 'train.py')
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1']), 'predict.py')
    assert 'test set: 20 images of 1 x 28 x 28 (classes 1 7)' in capsys.readouterr().out


# --- bad input (the tables of every script are in test_bad_input.py) ---

def test_help_names_every_flag_that_resume_allows(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(['--help'])
    assert e.value.code == 0
    help_text = ' '.join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f'only these may be given with it: {resumable_flags()}' in help_text
    assert '--amp' in resumable_flags() and '--compile' in resumable_flags()


def test_train_refuses_an_unwritable_model_fn(data_dir, tmp_path, capsys):
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'no' / 'such' / 'x.pth'),
                                                '--data_dir', data_dir], capsys, 'does not exist')
    (tmp_path / 'a-file').write_text('')
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'a-file' / 'sub' / 'x.pth'),
                                                '--data_dir', data_dir], capsys,
                       f'{tmp_path / "a-file"} is a file, not a folder')
