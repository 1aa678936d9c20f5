"""checkpoint.py on its own: which flags a command line gives, what --resume accepts, the
overwrite rule and the file's permissions."""
import os

import pytest
import torch

import checkpoint
from helpers import TINY, train_in_process
from utils import CliError


@pytest.mark.parametrize('argv, given', [
    (['--model_fn', 'm.pth', '--resume'], {'model_fn', 'resume'}),
    (['--model_fn=m.pth', '--resume', '--n_epochs', '30', '--no-amp'], {'model_fn', 'resume', 'n_epochs', 'amp'}),
    (['--model_fn', 'm.pth', '--hidden_sizes', '64', '32', '--lr', '-1e-3'], {'model_fn', 'hidden_sizes', 'lr'}),
])
def test_given_flags_are_named_as_argparse_stores_them(argv, given):
    assert checkpoint.given_flags(argv) == given


def test_resume_takes_the_saved_flags_and_only_those_given_that_do_not_change_the_run(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--lr', '3e-3', '--n_epochs', '2')
    asked = {'model_fn': model_fn, 'resume': True, 'n_epochs': 5, 'lr': 1e-3, 'gpu_id': -1, 'verbose': 1}
    config, saved = checkpoint.resume_config(asked, ['--model_fn', model_fn, '--resume', '--n_epochs', '5'])
    assert config['lr'] == 3e-3 and config['n_epochs'] == 5 and config['hidden_sizes'] == [64, 32]
    assert len(saved['history']) == 2
    with pytest.raises(CliError, match='--lr would change the run'):
        checkpoint.resume_config(asked, ['--model_fn', model_fn, '--resume', '--lr', '1e-3'])


def test_an_existing_file_is_kept_unless_the_run_resumes_or_overwrites(tmp_path):
    path = tmp_path / 'm.pth'
    checkpoint.check_fresh(str(path), resume=False, overwrite=False)  # nothing there yet
    path.write_bytes(b'x')
    with pytest.raises(CliError, match='exists; give --resume to go on training it or --overwrite'):
        checkpoint.check_fresh(str(path), resume=False, overwrite=False)
    checkpoint.check_fresh(str(path), resume=True, overwrite=False)
    checkpoint.check_fresh(str(path), resume=False, overwrite=True)


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_a_saved_checkpoint_has_the_mode_that_the_umask_gives_any_new_file(umask, tmp_path):
    previous = os.umask(umask)
    try:
        checkpoint.save_checkpoint(str(tmp_path / 'm.pth'), {'weights': torch.ones(2)})
        (tmp_path / 'plain').touch()
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / 'm.pth').st_mode & 0o777 == os.stat(tmp_path / 'plain').st_mode & 0o777
    assert os.stat(tmp_path / 'm.pth').st_mode & 0o777 == 0o666 & ~umask
