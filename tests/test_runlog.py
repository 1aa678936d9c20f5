"""The log of a training run (runlog.py): TensorBoard's event files and metrics.csv, read back by
TensorBoard's own reader, across --resume, predict.py's test metrics, and refusals."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import json

import pytest

import predict
import train
from helpers import (TINY, assert_log_matches, expect_usage_error, free_port, logged_rows, logged_scalars,
                     train_in_process)
from utils import file_mode, run_cli


def test_the_log_holds_every_epoch_of_the_history_with_steps_and_images(data_dir, tmp_path):
    model_fn = str(tmp_path / 'vae.pth')
    # 320 training images in batches of 64: 5 steps an epoch, the loss logged every 2nd step.
    saved = train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--model', 'vae',
                             '--log_every_n_steps', '2', '--log_images_every', '2')
    log_dir = str(tmp_path / 'vae_log')
    scalars, _ = assert_log_matches(log_dir, saved['history'])
    _, log = logged_scalars(log_dir)
    assert [step for step, _ in scalars['valid/loss']] == [5, 10, 15]
    assert [step for step, _ in scalars['step/train_loss']] == [2, 4, 6, 8, 10, 12, 14]
    assert [value for _, value in scalars['epoch']] == [1, 2, 3]
    rows = logged_rows(log_dir)
    assert [float(row['images_per_second']) for row in rows] == [320 / h['seconds'] for h in saved['history']]
    assert [float(row['best_valid_loss']) for row in rows] == [
        min(h['valid_loss'] for h in saved['history'][:i + 1]) for i in range(3)]
    # images after the first epoch and every 2nd: 8 valid images above their reconstructions, 16 samples
    for tag in ('reconstructions', 'samples'):
        images = log.Images(tag)
        assert [image.step for image in images] == [5, 10]
        assert (images[0].width, images[0].height) == (8 * 28, 2 * 28)
    for name in os.listdir(log_dir):  # the user's umask, as the checkpoint
        assert os.stat(os.path.join(log_dir, name)).st_mode & 0o777 == file_mode(), name


def test_a_resumed_run_logs_each_epoch_once_even_after_a_log_ran_ahead_of_its_checkpoint(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    common = ['--data_dir', data_dir, *TINY, '--log_every_n_steps', '1']
    train_in_process('--model_fn', model_fn, *common, '--n_epochs', '2')
    shutil.copy(model_fn, tmp_path / 'two.pth')
    train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '3')
    # As if the process had died after logging epoch 3 but before its checkpoint was on disk:
    shutil.copy(tmp_path / 'two.pth', model_fn)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '4', '--log_every_n_steps', '1')
    scalars, _ = assert_log_matches(str(tmp_path / 'm_log'), resumed['history'])
    assert [step for step, _ in scalars['step/train_loss']] == list(range(1, 21))


def test_predict_adds_its_test_metrics_to_the_log(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    saved = train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY)
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--what', 'metrics', '--gpu_id', '-1']), 'predict.py')
    with open(tmp_path / 'm_predict' / 'metrics.json') as f:
        metrics = json.load(f)
    scalars, _ = logged_scalars(str(tmp_path / 'm_log'))
    assert scalars['test/sse_per_image'] == [(15, pytest.approx(metrics['sse_per_image'], rel=1e-6))]
    assert len(saved['history']) == 3 and 'test/dataset' not in scalars


def test_no_log_writes_only_the_checkpoint(data_dir, tmp_path):
    train_in_process('--model_fn', str(tmp_path / 'm.pth'), '--data_dir', data_dir, *TINY, '--no_log')
    assert os.listdir(tmp_path) == ['m.pth']


def test_without_tensorboard_the_log_is_the_csv_and_one_line_says_so(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tensorboard', None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    model_fn = str(tmp_path / 'm.pth')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--data_dir', data_dir, *TINY]), 'train.py')
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and 'tensorboard' in notes[0] and 'pip install' in notes[0]
    assert os.listdir(tmp_path / 'm_log') == ['metrics.csv']
    assert len(logged_rows(str(tmp_path / 'm_log'))) == 3


@pytest.mark.parametrize('case', ['file', 'unwritable', 'another_run', 'no_log_with_steps'])
def test_a_log_folder_that_cannot_take_the_log_is_refused_before_training(case, data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    argv = ['--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--verbose', '0']
    log_dir = tmp_path / 'log'
    if case == 'file':
        log_dir.write_text('')
    elif case == 'unwritable':
        if os.geteuid() == 0:
            pytest.skip('root writes into any folder')
        log_dir.mkdir(mode=0o500)
    elif case == 'another_run':
        train_in_process('--model_fn', str(tmp_path / 'other.pth'), '--data_dir', data_dir, *TINY, '--log_dir',
                         str(log_dir))
    argv += ['--no_log', '--log_every_n_steps', '5'] if case == 'no_log_with_steps' else ['--log_dir', str(log_dir)]
    before = sorted(os.listdir(tmp_path))
    expect_usage_error(train.main, 'train.py', argv, capsys, '--no_log' if case == 'no_log_with_steps' else '--log_dir')
    assert sorted(os.listdir(tmp_path)) == before  # no checkpoint, nothing written
    if case == 'another_run':  # --overwrite replaces that log
        train_in_process(*argv[:-1], str(log_dir), '--overwrite')
        assert len(logged_rows(str(log_dir))) == 3


@pytest.mark.slow
def test_tensorboard_serves_two_runs_and_their_values(data_dir, tmp_path):
    runs = {}
    for name, btl_size in (('a', '2'), ('b', '3')):
        runs[name] = train_in_process('--model_fn', str(tmp_path / f'{name}.pth'), '--data_dir', data_dir, *TINY,
                                      '--btl_size', btl_size)
    port = free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'tensorboard'), '--logdir',
                               str(tmp_path), '--host', '127.0.0.1', '--port', str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def get(path):
            with urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=5) as response:
                return json.load(response)
        for _ in range(120):  # TensorBoard reads the folder in the background after it starts
            try:
                if sorted(get('/data/runs')) == ['a_log', 'b_log']:
                    break
            except OSError:
                pass
            time.sleep(.5)
        assert sorted(get('/data/runs')) == ['a_log', 'b_log']
        for name, saved in runs.items():
            values = get(f'/data/plugin/scalars/scalars?run={name}_log&tag=valid/loss')
            assert [step for _, step, _ in values] == [5, 10, 15]
            assert [value for _, _, value in values] == [
                pytest.approx(h['valid_loss'], rel=1e-6) for h in saved['history']]
    finally:
        server.terminate()
        server.wait(timeout=30)
