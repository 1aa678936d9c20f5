"""Interrupted runs, resume, non-finite losses, determinism and unwritable outputs."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import oneclass
import predict
import recipes
import train
from helpers import (ROOT, TINY, ScalarModel, assert_log_matches, assert_same_run, expect_usage_error, run_script,
                     train_in_process)
from trainer import Trainer
from utils import run_cli


@pytest.mark.parametrize('flags', [['--model', 'ae', '--use_dropout'], ['--model', 'vae'], ['--model', 'ae', '--amp'],
                                   ['--model', 'vae', '--binarize', '--gated', '--ema', '0.9']])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(flags, data_dir, tmp_path):
    common = ['--data_dir', data_dir, '--btl_size', '3', '--gpu_id', '-1', '--hidden_sizes', '64', '32',
              '--batch_size', '32']
    whole = train_in_process('--model_fn', str(tmp_path / 'whole.pth'), *common, *flags, '--n_epochs', '4')
    part = str(tmp_path / 'part.pth')
    train_in_process('--model_fn', part, *common, *flags, '--n_epochs', '2')
    resumed = train_in_process('--model_fn', part, '--resume', '--n_epochs', '4')
    assert_same_run(whole, resumed)


def test_an_early_stopped_run_resumed_stops_where_an_uninterrupted_one_does(data_dir, tmp_path):
    # lr 0.1 makes the valid loss stall within a few epochs, so that patience 1 ends the run early.
    common = ['--data_dir', data_dir, *TINY, '--lr', '0.1', '--patience', '1']
    whole = train_in_process('--model_fn', str(tmp_path / 'whole.pth'), *common, '--n_epochs', '30')
    assert len(whole['history']) < 30
    part = str(tmp_path / 'part.pth')
    train_in_process('--model_fn', part, *common, '--n_epochs', '2')
    resumed = train_in_process('--model_fn', part, '--resume', '--n_epochs', '30')
    assert_same_run(whole, resumed)


@pytest.mark.slow
def test_resume_may_switch_amp_and_compile_and_takes_defaults_for_flags_newer_than_the_checkpoint(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--n_epochs', '1')
    saved = torch.load(model_fn, weights_only=True)
    assert saved['training_config']['amp'] is False
    del saved['training_config']['amp'], saved['training_config']['compile']  # as a checkpoint from before them
    torch.save(saved, model_fn)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '2')
    assert resumed['config'].training.amp is False and resumed['config'].training.compile is False
    assert len(resumed['history']) == 2
    eager_fn = str(tmp_path / 'eager.pth')
    shutil.copy(model_fn, eager_fn)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '3', '--amp', '--compile')
    assert resumed['config'].training.amp is True and resumed['config'].training.compile is True
    assert len(resumed['history']) == 3
    eager = train_in_process('--model_fn', eager_fn, '--resume', '--n_epochs', '3', '--amp')
    # The compiled epoch did the same training; only the order of the bf16 operations differs.
    assert resumed['history'][-1]['valid_loss'] == pytest.approx(eager['history'][-1]['valid_loss'], rel=.02)


def assert_equal_values(a, b, path='checkpoint'):
    """Two nested checkpoint values hold the same tensors (bit for bit) and the same plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a.keys() - {'seconds'}:  # an epoch's wall time is never the same twice
            assert_equal_values(a[key], b[key], f'{path}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_values(x, y, f'{path}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize('model', ['ae', 'vae'])
def test_the_same_seed_on_the_same_machine_gives_identical_checkpoints(model, data_dir, tmp_path):
    common = ['--data_dir', data_dir, *TINY, '--use_dropout', '--model', model]
    a = train_in_process('--model_fn', str(tmp_path / 'a.pth'), *common)
    b = train_in_process('--model_fn', str(tmp_path / 'b.pth'), *common)
    c = train_in_process('--model_fn', str(tmp_path / 'c.pth'), *common, '--seed', '2')
    # weights, optimizer state, history, random number generator states; not the name each was given
    assert_equal_values(a, b)
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


@pytest.mark.slow
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
    # The log holds each epoch once: none of the epoch that the signal cut short.
    assert_log_matches(str(tmp_path / 'interrupted_log'), torch.load(model_fn, weights_only=True)['history'])


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
    trainer = Trainer(ScalarModel(), None)
    model_fn = tmp_path / 'm.pth'
    handlers = {s: signal.getsignal(s) for s in checkpoint.STOP_SIGNALS}
    try:
        with pytest.raises(SystemExit) as exit_:
            with checkpoint.stop_on_signals(trainer) as save_in_progress:
                os.kill(os.getpid(), signal.SIGINT)
                with save_in_progress():
                    os.kill(os.getpid(), signal.SIGINT)
                    checkpoint.save_checkpoint(str(model_fn), {'weights': torch.ones(3)})
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert trainer.stop_requested == signal.SIGINT and exit_.value.code == 130
    assert torch.equal(torch.load(model_fn, weights_only=True)['weights'], torch.ones(3))
    assert 'SIGINT again: exiting after the save in progress' in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    model_fn = tmp_path / 'good.pth'
    train_in_process('--model_fn', str(model_fn), '--data_dir', data_dir, *TINY)
    good = model_fn.read_bytes()
    result = run_script('train.py', '--model_fn', str(model_fn), '--data_dir', data_dir, *TINY, '--lr', '1e6',
                        '--overwrite')
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('train.py: stopped: loss is nan at step ')
    assert 'of epoch 1' in result.stderr
    assert model_fn.read_bytes() == good


@pytest.mark.slow
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
    expect_usage_error(oneclass.main, 'oneclass.py', ['--dataset', 'mnist', '--data_dir', data_dir, '--out_dir',
                                                      str(blocker / 'oc'), '--gpu_id', '-1'],
                       capsys, f'--out_dir {blocker / "oc"}: cannot create it')
    expect_usage_error(recipes.main, 'recipes.py', ['--data_dir', data_dir, '--recipes_dir', str(blocker / 'r')],
                       capsys, f'--recipes_dir {blocker / "r"}: cannot create it')
    assert sorted(os.listdir(tmp_path)) == ['a-file', 'm.pth', 'm_log']  # no class trained, no recipe begun


# --- nothing replaced by accident, files as the user's umask says, a log that stays readable ---

@pytest.mark.slow
def test_an_existing_checkpoint_is_never_replaced_without_resume_or_overwrite(data_dir, tmp_path):
    model_fn = tmp_path / 'm.pth'
    common = ['--model_fn', str(model_fn), '--data_dir', data_dir, *TINY, '--n_epochs', '1']
    assert run_script('train.py', *common).returncode == 0
    before = model_fn.read_bytes()
    again = run_script('train.py', *common)
    assert again.returncode == 2 and 'Traceback' not in again.stderr
    assert again.stderr.strip() == (f'train.py: error: {model_fn} exists; give --resume to go on training it or '
                                    f'--overwrite to start again (the file is left as it is)')
    assert model_fn.read_bytes() == before
    both = run_script('train.py', *common, '--overwrite', '--resume')
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1
    assert 'not allowed with argument' in both.stderr and model_fn.read_bytes() == before
    assert run_script('train.py', *common, '--seed', '2', '--overwrite').returncode == 0
    assert model_fn.read_bytes() != before


def test_predict_writes_into_a_folder_with_files_only_with_overwrite(data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--n_epochs', '1')
    out_dir = tmp_path / 'figures'
    argv = ['--model_fn', model_fn, '--out_dir', str(out_dir), '--what', 'curves', '--gpu_id', '-1']
    run_cli(lambda: predict.main(argv), 'predict.py')
    before = (out_dir / 'curves.png').read_bytes()
    expect_usage_error(predict.main, 'predict.py', argv + ['--what', 'recon'], capsys,
                       f'--out_dir {out_dir} already holds files; give --overwrite')
    assert sorted(os.listdir(out_dir)) == ['curves.png', 'metrics.json']
    assert (out_dir / 'curves.png').read_bytes() == before
    run_cli(lambda: predict.main(argv + ['--what', 'recon', '--overwrite']), 'predict.py')
    assert 'reconstructions.png' in os.listdir(out_dir)


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(umask, mode, data_dir, tmp_path):
    model_fn, out_dir = str(tmp_path / 'm.pth'), tmp_path / 'out'
    before = os.umask(umask)  # the process's umask, which every file the scripts create gets
    try:
        train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--n_epochs', '1')
        run_cli(lambda: predict.main(['--model_fn', model_fn, '--out_dir', str(out_dir), '--gpu_id', '-1', '--what',
                                      'recon', 'metrics']), 'predict.py')
    finally:
        os.umask(before)
    for path in (model_fn, out_dir / 'reconstructions.png', out_dir / 'metrics.json'):
        assert os.stat(path).st_mode & 0o777 == mode, path


def test_a_verbose_run_logged_to_a_file_is_a_line_per_epoch_and_a_short_summary(data_dir, tmp_path):
    n_epochs = 4
    with open(tmp_path / 'log.txt', 'w') as log:
        result = subprocess.run([sys.executable, 'train.py', '--model_fn', str(tmp_path / 'm.pth'), '--data_dir',
                                 data_dir, *TINY, '--n_epochs', str(n_epochs), '--verbose', '1'],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert result.returncode == 0
    lines = (tmp_path / 'log.txt').read_text().splitlines()
    assert len(lines) <= n_epochs + 5, lines
    assert sum(line.startswith('epoch ') for line in lines) == n_epochs
    assert not any('\r' in line or '\x1b' in line for line in lines)  # no progress bar in a file
    assert lines[-1].startswith(f'saved {tmp_path / "m.pth"}')
