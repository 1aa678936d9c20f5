"""Interrupted runs, resume, non-finite losses, determinism and unwritable outputs."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import predict
import train
from test_cli import TINY, expect_usage_error, run_script
from test_trainer import ScalarModel
from utils import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_in_process(*argv):
    run_cli(lambda: train.main([*argv, '--verbose', '0']), 'train.py')
    return torch.load(argv[1], weights_only=True)


def assert_same_run(a, b):
    for key in ('model',):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a['last']['model'][k], b['last']['model'][k]) for k in a['last']['model'])
    assert a['history'] == b['history']


@pytest.mark.parametrize('flags', [['--model', 'ae', '--use_dropout'], ['--model', 'vae'], ['--model', 'ae', '--amp']])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(flags, data_dir, tmp_path):
    common = ['--data_dir', data_dir, '--btl_size', '3', '--gpu_id', '-1', '--hidden_sizes', '64', '32',
              '--batch_size', '32']
    whole = train_in_process('--model_fn', str(tmp_path / 'whole.pth'), *common, *flags, '--n_epochs', '4')
    part = str(tmp_path / 'part.pth')
    train_in_process('--model_fn', part, *common, *flags, '--n_epochs', '2')
    resumed = train_in_process('--model_fn', part, '--resume', '--n_epochs', '4')
    assert_same_run(whole, resumed)


def test_resume_may_switch_amp_and_compile_and_takes_defaults_for_flags_newer_than_the_checkpoint(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--n_epochs', '1')
    saved = torch.load(model_fn, weights_only=True)
    assert saved['config']['amp'] is False
    del saved['config']['amp'], saved['config']['compile']  # as a checkpoint from before them holds it
    torch.save(saved, model_fn)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '2')
    assert resumed['config']['amp'] is False and resumed['config']['compile'] is False
    assert len(resumed['history']) == 2
    eager_fn = str(tmp_path / 'eager.pth')
    shutil.copy(model_fn, eager_fn)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '3', '--amp', '--compile')
    assert resumed['config']['amp'] is True and resumed['config']['compile'] is True
    assert len(resumed['history']) == 3
    eager = train_in_process('--model_fn', eager_fn, '--resume', '--n_epochs', '3', '--amp')
    # The compiled epoch did the same training; only the order of the bf16 operations differs.
    assert resumed['history'][-1]['valid_loss'] == pytest.approx(eager['history'][-1]['valid_loss'], rel=.02)


def test_same_seed_same_weights_other_seed_other_weights(data_dir, tmp_path):
    common = ['--data_dir', data_dir, *TINY, '--use_dropout']
    a = train_in_process('--model_fn', str(tmp_path / 'a.pth'), *common)
    b = train_in_process('--model_fn', str(tmp_path / 'b.pth'), *common)
    c = train_in_process('--model_fn', str(tmp_path / 'c.pth'), *common, '--seed', '2')
    assert_same_run(a, b)
    assert not torch.equal(a['model']['encoder.0.block.0.weight'], c['model']['encoder.0.block.0.weight'])


def start_training(model_fn, data_dir, n_epochs):
    """train.py in a subprocess, its stdout unbuffered so the test sees each epoch's line."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'train.py'), '--model_fn', model_fn, '--data_dir', data_dir,
         '--hidden_sizes', '256', '128', '--batch_size', '8', '--n_epochs', str(n_epochs), '--gpu_id', '-1'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def wait_for_epoch_line(process, epoch=1):
    for line in process.stdout:
        if line.startswith(f'epoch {epoch}:'):
            return
    pytest.fail(f'training ended before epoch {epoch}: ' + process.stderr.read())


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(signum, data_dir, tmp_path):
    n_epochs = 12
    reference = str(tmp_path / 'reference.pth')
    assert run_script('train.py', '--model_fn', reference, '--data_dir', data_dir, '--hidden_sizes', '256', '128',
                      '--batch_size', '8', '--n_epochs', str(n_epochs), '--gpu_id', '-1').returncode == 0

    model_fn = str(tmp_path / 'interrupted.pth')
    process = start_training(model_fn, data_dir, n_epochs)
    wait_for_epoch_line(process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    last_line = err.strip().splitlines()[-1]
    assert f'{signal.Signals(signum).name} in epoch' in last_line and f'--model_fn {model_fn} --resume' in last_line
    saved = torch.load(model_fn, weights_only=True)
    assert 1 <= len(saved['history']) < n_epochs

    resumed = run_script('train.py', '--model_fn', model_fn, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert f'resuming after epoch {len(saved["history"])}' in resumed.stdout
    assert_same_run(torch.load(reference, weights_only=True), torch.load(model_fn, weights_only=True))


def test_a_second_interrupt_exits_at_once_and_leaves_a_whole_file(data_dir, tmp_path):
    model_fn = str(tmp_path / 'twice.pth')
    process = start_training(model_fn, data_dir, 50)
    wait_for_epoch_line(process, epoch=2)  # printed after epoch 1 was saved
    process.send_signal(signal.SIGINT)
    time.sleep(.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert 'Traceback' not in err
    assert len(torch.load(model_fn, weights_only=True)['history']) >= 1  # whichever epoch, the file is whole
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_a_second_signal_during_a_save_exits_once_the_file_is_whole(tmp_path, capsys):
    # A stop was requested; the second SIGINT lands inside a save. Exiting from within
    # torch.save used to raise from its half-closed zip writer (exit 1 and a traceback).
    trainer = train.Trainer(ScalarModel(), None)
    model_fn = tmp_path / 'm.pth'
    handlers = {s: signal.getsignal(s) for s in train.STOP_SIGNALS}
    try:
        with pytest.raises(SystemExit) as exit_:
            with train.stop_on_signals(trainer) as save_in_progress:
                os.kill(os.getpid(), signal.SIGINT)
                with save_in_progress():
                    os.kill(os.getpid(), signal.SIGINT)
                    train.save_checkpoint(str(model_fn), {'weights': torch.ones(3)})
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert trainer.stop_requested == signal.SIGINT and exit_.value.code == 130
    assert torch.equal(torch.load(model_fn, weights_only=True)['weights'], torch.ones(3))
    assert 'SIGINT again: exiting after the save in progress' in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    model_fn = tmp_path / 'good.pth'
    assert run_script('train.py', '--model_fn', str(model_fn), '--data_dir', data_dir, *TINY).returncode == 0
    good = model_fn.read_bytes()
    result = run_script('train.py', '--model_fn', str(model_fn), '--data_dir', data_dir, *TINY, '--lr', '1e6')
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('train.py: stopped: loss is nan at step ')
    assert 'of epoch 1' in result.stderr
    assert model_fn.read_bytes() == good


def test_a_failing_compile_stops_with_one_line(data_dir, tmp_path):
    """--compile where torch.compile cannot work: on the CPU it needs a C++ compiler."""
    env = {**os.environ, 'CXX': str(tmp_path / 'no-such-compiler'), 'TORCHINDUCTOR_FX_GRAPH_CACHE': '0',
           'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'cache')}  # no compiled code from other tests
    model_fn = tmp_path / 'm.pth'
    result = run_script('train.py', '--model_fn', str(model_fn), '--data_dir', data_dir, *TINY, '--compile', env=env)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('train.py: stopped: --compile: torch.compile failed (')
    assert not model_fn.exists()


@pytest.mark.parametrize('flags, match', [
    (['--btl_size', '4'], '--btl_size would change the run'),
    (['--lr', '0.1'], '--lr would change the run'),
    (['--n_epochs', '3'], 'already holds 3 epochs'),
])
def test_resume_refuses_flags_that_change_the_run(flags, match, data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY)
    before = open(model_fn, 'rb').read()
    expect_usage_error(train.main, 'train.py', ['--model_fn', model_fn, '--resume', *flags], capsys, match)
    assert open(model_fn, 'rb').read() == before


def test_resume_refuses_a_stretched_cosine_schedule(data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--scheduler', 'cosine')
    expect_usage_error(train.main, 'train.py', ['--model_fn', model_fn, '--resume', '--n_epochs', '5'], capsys,
                       'cannot be stretched')


def test_unwritable_out_dir_is_reported_before_any_work(data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY)
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    expect_usage_error(predict.main, 'predict.py', ['--model_fn', model_fn, '--out_dir', str(blocker / 'figs')],
                       capsys, f'--out_dir {blocker / "figs"}: cannot create it')
