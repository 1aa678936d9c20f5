"""train.py under torchrun on CPUs (gloo): 2 ranks follow the steps of one process, on one "machine" or
two; a stop, a resume on another number of ranks, a rank that dies; BatchNorm and a VAE on 2 ranks."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from checkpoint import load_checkpoint
from helpers import ROOT, assert_log_matches, expect_usage_error, free_port, run_script, train_in_process
from utils import child_processes

TRAIN = os.path.join(ROOT, 'train.py')
# No BatchNorm and no random numbers in the loss: N ranks then compute what one process does, up to the
# order of the sums.
DETERMINISTIC = ['--use_dropout', '--dropout_p', '0', '--likelihood', 'mse', '--hidden_sizes', '64', '32',
                 '--batch_size', '64', '--gpu_id', '-1', '--verbose', '0']
LR = 1e-3  # Adam's default here, which moves a weight by at most about LR a step


def torchrun(*args, nproc=2, launch=('--standalone',)):
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', *launch, '--nproc_per_node', str(nproc),
                             TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finished(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def assert_same_training(alone, ranks, n_train):
    """Two runs of the same steps, one process and several ranks: the same epochs, losses equal up to the
    rounding of float32 sums over n_train images taken in another order, weights that differ by a small
    share of the most that Adam's steps can move them (LR a step)."""
    assert len(alone['history']) == len(ranks['history'])
    tolerance = n_train * torch.finfo(torch.float32).eps
    for a, b in zip(alone['history'], ranks['history']):
        for key in a.keys() - {'seconds'}:
            assert b[key] == pytest.approx(a[key], rel=tolerance), key
    n_steps = len(alone['history']) * -(-n_train // 64)
    for name, weight in alone['model'].items():
        assert torch.allclose(weight, ranks['model'][name], rtol=0, atol=1e-3 * LR * n_steps), name


@pytest.mark.slow
def test_two_ranks_on_one_machine_or_two_train_as_one_process_and_only_rank_0_writes(data_dir, tmp_path):
    common = ['--data_dir', data_dir, *DETERMINISTIC, '--n_epochs', '2']
    alone = train_in_process('--model_fn', str(tmp_path / 'alone.pth'), *common)
    (tmp_path / 'ranks').mkdir()
    finished(torchrun('--model_fn', str(tmp_path / 'ranks' / 'm.pth'), *common))
    assert sorted(os.listdir(tmp_path / 'ranks')) == ['m.pth', 'm_log']
    assert len([name for name in os.listdir(tmp_path / 'ranks' / 'm_log') if name.startswith('events')]) == 1
    on_two = load_checkpoint(str(tmp_path / 'ranks' / 'm.pth'))
    assert_same_training(alone, on_two, n_train=320)
    assert_log_matches(str(tmp_path / 'ranks' / 'm_log'), on_two['history'])

    # Two "machines" of one rank each, meeting at a rendezvous on this one.
    endpoint = f'127.0.0.1:{free_port()}'
    machines = [torchrun('--model_fn', str(tmp_path / 'machines.pth'), *common, nproc=1,
                         launch=('--nnodes', '2', '--node_rank', str(node), '--rdzv_backend', 'c10d',
                                 '--rdzv_endpoint', endpoint, '--rdzv_id', 'test'))
                 for node in (0, 1)]
    for machine in machines:
        finished(machine)
    assert_same_training(alone, load_checkpoint(str(tmp_path / 'machines.pth')), n_train=320)


def rank_pid(launcher, rank):
    """The process id of a rank that torchrun started."""
    for pid in child_processes(launcher.pid):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:  # ended meanwhile
            continue
        if f'RANK={rank}'.encode() in environ:
            return pid
    raise AssertionError(f'no rank {rank} under torchrun')


def wait_for_file(path, process, timeout=120):
    start = time.monotonic()
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() - start < timeout
        time.sleep(.05)


@pytest.mark.slow
def test_sigterm_on_two_ranks_saves_the_last_epoch_and_one_process_resumes_it(data_dir, tmp_path):
    # Batches of 8: 40 steps an epoch, long enough for the signal to land inside the run.
    common = ['--data_dir', data_dir, *DETERMINISTIC, '--batch_size', '8', '--n_epochs', '6']
    alone = train_in_process('--model_fn', str(tmp_path / 'alone.pth'), *common)
    model_fn = str(tmp_path / 'm.pth')
    launcher = torchrun('--model_fn', model_fn, *common)
    wait_for_file(model_fn, launcher)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith('train.py:')]
    assert len(lines) == 1 and 'SIGTERM in epoch' in lines[0] and '--resume' in lines[0], err
    saved = load_checkpoint(model_fn)
    assert 1 <= len(saved['history']) < 6
    resumed = train_in_process('--model_fn', model_fn, '--resume')
    assert_same_training(alone, resumed, n_train=320)
    assert_log_matches(str(tmp_path / 'm_log'), resumed['history'])


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_on_every_rank_in_one_line(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    launcher = torchrun('--model_fn', model_fn, '--data_dir', data_dir, *DETERMINISTIC, '--batch_size', '8',
                        '--n_epochs', '50')
    wait_for_file(model_fn, launcher)
    os.kill(rank_pid(launcher, 1), signal.SIGKILL)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith('train.py:')]
    assert len(lines) == 1 and 'lost the other ranks' in lines[0] and 'holds epoch' in lines[0], err
    assert 1 <= len(load_checkpoint(model_fn)['history']) < 50


@pytest.mark.slow
def test_batch_norm_and_a_vae_train_and_resume_on_another_number_of_ranks(data_dir, tmp_path):
    common = ['--data_dir', data_dir, '--hidden_sizes', '64', '32', '--batch_size', '64', '--gpu_id', '-1',
              '--verbose', '0']
    bn, vae = str(tmp_path / 'bn.pth'), str(tmp_path / 'vae.pth')
    finished(torchrun('--model_fn', bn, *common, '--n_epochs', '2'))  # BatchNorm: trained on 2 ranks
    train_in_process('--model_fn', bn, '--resume', '--n_epochs', '3')  # resumed on 1
    train_in_process('--model_fn', vae, *common, '--model', 'vae', '--n_epochs', '2')  # a VAE: trained on 1
    finished(torchrun('--model_fn', vae, '--resume', '--n_epochs', '3', '--gpu_id', '-1'))  # resumed on 2
    for model_fn in (bn, vae):
        history = load_checkpoint(model_fn)['history']
        assert [h['epoch'] for h in history] == [1, 2, 3]
        assert all(torch.isfinite(torch.tensor(h['valid_loss'])) for h in history)
        assert_log_matches(model_fn.replace('.pth', '_log'), history)
        result = run_script('predict.py', '--model_fn', model_fn, '--what', 'recon', 'metrics', '--gpu_id', '-1')
        assert result.returncode == 0, result.stderr


def test_gpus_that_the_ranks_of_a_machine_cannot_have_are_refused_before_training(data_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    # What torchrun --nproc_per_node 2 sets in each rank's environment; the refusal comes before any
    # rank joins the others.
    for name, value in {'RANK': '0', 'WORLD_SIZE': '2', 'LOCAL_RANK': '0', 'LOCAL_WORLD_SIZE': '2'}.items():
        monkeypatch.setenv(name, value)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'm.pth'), '--data_dir', data_dir,
                                                '--gpu_id', str(n_gpus)], capsys, f'--gpu_id {n_gpus}')
    assert os.listdir(tmp_path) == []
