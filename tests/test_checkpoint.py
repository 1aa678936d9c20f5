"""checkpoint.py on its own, with train.py's parse: which flags a command line gives, what --resume accepts, the
overwrite rule and the file's permissions."""
import os
import shutil

import pytest
import torch

import checkpoint
import flags
from checkpoint import load_model, model_from_checkpoint
from config import RunConfig, make_config
from helpers import TINY, train_in_process, write_dataset
from utils import CliError


@pytest.mark.parametrize('argv, given', [
    (['--model_fn', 'm.pth', '--resume'], set()),
    (['--model_fn=m.pth', '--resume', '--n_epochs', '30', '--no-amp'], {'n_epochs', 'amp'}),
    (['--model_fn', 'm.pth', '--hidden_sizes', '64', '32', '--lr', '1e-3'], {'hidden_sizes', 'lr'}),
    (['--model_fn', 'm.pth', '--model', 'ae', '--btl_size', '10'], {'model', 'btl_size'}),  # given, though defaults
])
def test_the_config_flags_given_are_known_from_the_parse(argv, given):
    config, options, found = flags.parse(argv)
    assert found == given
    assert options.model_fn == 'm.pth' and config.training.n_epochs == (30 if 'n_epochs' in given else 20)


def test_resume_takes_the_saved_flags_and_only_those_given_that_do_not_change_the_run(data_dir, tmp_path):
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *TINY, '--lr', '3e-3', '--n_epochs', '2')
    asked = make_config(n_epochs=5, lr=1e-3)
    config, saved = checkpoint.resume_config(model_fn, asked, {'n_epochs'})
    assert config.training.lr == 3e-3 and config.training.n_epochs == 5 and config.model.hidden_sizes == [64, 32]
    assert len(saved['history']) == 2
    on_disk = torch.load(model_fn, weights_only=True)
    assert set(on_disk) >= set(checkpoint.SAVED_PARTS) and 'model_fn' not in str(on_disk['model_config'])
    with pytest.raises(CliError, match='--lr would change the run'):
        checkpoint.resume_config(model_fn, asked, {'lr'})


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


def test_a_checkpoint_of_the_older_layout_loads_and_gives_the_outputs_it_gave():
    """A gated VampPrior VAE saved by an earlier layout of the code (two Linears per gated layer, the
    pseudo-inputs on the VAE, every flag of its run in the config), with what that code computed
    from it: today's code loads it through predict.py's path and computes the same."""
    path = os.path.join(os.path.dirname(__file__), 'data', 'older_layout_gated_vamp.pth')
    saved = checkpoint.load_checkpoint(path)
    assert 'encoder.0.block.0.h.weight' in saved['model'] and 'pseudo_inputs' in saved['model']
    model = model_from_checkpoint(saved, path).eval()
    expected = torch.load(path.replace('.pth', '.outputs.pt'), weights_only=True)
    with torch.no_grad():
        codes = model.encode(expected['x'])
        # the same products, split or fused: equal within fp32 rounding of sums of 36 terms
        assert torch.allclose(codes, expected['codes'], atol=1e-5)
        assert torch.allclose(model.decode(codes), expected['decoded'], atol=1e-5)
        assert torch.allclose(model.log_prior(codes), expected['log_prior'], atol=1e-4)


def test_an_autoencoder_of_the_older_loss_flag_loads_with_that_loss_as_its_likelihood():
    """An AutoEncoder trained with --loss bce by the code before --likelihood covered both models (its
    config holds loss 'bce' and the VAE's unused default likelihood 'bernoulli'): it loads as a
    Bernoulli AutoEncoder and computes what it computed then."""
    path = os.path.join(os.path.dirname(__file__), 'data', 'older_layout_ae_bce.pth')
    assert torch.load(path, weights_only=True)['config']['loss'] == 'bce'
    saved = checkpoint.load_checkpoint(path)
    assert saved['config'].model.likelihood == 'bernoulli' and 'loss' not in saved['config'].flags()
    model = model_from_checkpoint(saved, path).eval()
    assert type(model.likelihood).__name__ == 'Bernoulli'
    expected = torch.load(path.replace('.pth', '.outputs.pt'), weights_only=True)
    with torch.no_grad():
        codes = model.encode(expected['x'])
        assert torch.allclose(codes, expected['codes'], atol=1e-5)
        assert torch.allclose(model(expected['x']), expected['decoded'], atol=1e-5)
        # the same cross-entropy, summed over 784 pixels by another formula: equal within fp32 rounding
        assert torch.allclose(model.image_losses(expected['x'])[1]['recon'], expected['recon'], rtol=1e-5)


def gives_the_outputs_it_gave(model, expected):
    """The model's codes, decoded images and log-prior of expected['x'] are those saved beside its checkpoint."""
    with torch.no_grad():  # the same code on the same weights: equal but for the order of fp32 sums
        codes = model.encode(expected['x'])
        assert torch.allclose(codes, expected['codes'], atol=1e-5)
        assert torch.allclose(model.decode(codes), expected['decoded'], atol=1e-5)
        assert torch.allclose(model.log_prior(codes), expected['log_prior'], atol=1e-4)


def test_a_checkpoint_of_one_config_dict_loads_resumes_and_gives_the_outputs_it_gave(tmp_path):
    """A VAE of a mixture prior and a Gaussian likelihood, saved with its config as one dict of every
    flag, as train.py saved it before the config was kept in parts, with what that code computed from
    it: it loads, computes the same, and resumes into a checkpoint of the parts."""
    path = os.path.join(os.path.dirname(__file__), 'data', 'flat_config_mog_gaussian.pth')
    assert 'config' in torch.load(path, weights_only=True)
    model, saved = load_model(path, torch.device('cpu'))
    assert saved['config'].model.prior == 'mog' and saved['config'].model.n_components == 3
    expected = torch.load(path.replace('.pth', '.outputs.pt'), weights_only=True)
    gives_the_outputs_it_gave(model, expected)
    with torch.no_grad():
        torch.manual_seed(1)
        assert torch.allclose(model.image_losses(expected['x'])[1]['recon'], expected['elbo_terms'], rtol=1e-5)
    model_fn = str(tmp_path / 'm.pth')
    shutil.copy(path, model_fn)
    write_dataset(str(tmp_path / 'data'), n_train=200, n_test=50)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '3', '--data_dir',
                               str(tmp_path / 'data'), '--gpu_id', '-1')
    assert len(resumed['history']) == 3
    assert resumed['config'] == saved['config'].replace(n_epochs=3, data_dir=str(tmp_path / 'data'))
    assert 'config' not in torch.load(model_fn, weights_only=True)


def test_a_checkpoint_saved_before_max_hidden_size_keeps_the_sizes_it_was_made_with(tmp_path):
    """Before --max_hidden_size, the --n_layers sizes of an input of over 1,024 values fell from the
    input's size: a checkpoint without the key rebuilds them so and resumes; one with it, from its value."""
    data_dir, today, older = str(tmp_path / 'data'), str(tmp_path / 'today.pth'), str(tmp_path / 'older.pth')
    write_dataset(data_dir, n_train=200, n_test=50)
    flags = ['--data_dir', data_dir, '--image_size', '33', '33', '--n_layers', '1', '--btl_size', '2', '--n_epochs',
             '1', '--gpu_id', '-1']
    train_in_process('--model_fn', today, *flags)
    model, saved = load_model(today, torch.device('cpu'))
    assert saved['config'].model.max_hidden_size == 1024 and model.encoder[0].block[0].out_features == 513
    train_in_process('--model_fn', older, *flags, '--max_hidden_size', '2000')  # sized from its 1,089 values
    raw = torch.load(older, weights_only=True)
    del raw['model_config']['max_hidden_size']  # as the code before the key saved it
    torch.save(raw, older)
    model, saved = load_model(older, torch.device('cpu'))
    assert saved['config'].model.max_hidden_size is None and model.encoder[0].block[0].out_features == 546
    resumed = train_in_process('--model_fn', older, '--resume', '--n_epochs', '2', '--gpu_id', '-1')
    assert resumed['config'].model.max_hidden_size is None and len(resumed['history']) == 2


@pytest.mark.parametrize('saved, likelihood', [
    ({'model': 'ae', 'loss': 'mse', 'likelihood': 'bernoulli'}, 'mse'),
    ({'model': 'ae', 'loss': None, 'likelihood': 'bernoulli'}, 'mse'),
    ({'model': 'ae'}, 'mse'),
    ({'model': 'ae', 'likelihood': 'cbernoulli'}, 'cbernoulli'),
    ({'model': 'vae', 'loss': None, 'likelihood': 'gaussian'}, 'gaussian'),
    ({'model': 'vae'}, 'bernoulli'),
])
def test_an_older_config_gets_its_likelihood_in_one_place(saved, likelihood):
    config = RunConfig.from_flags(checkpoint.upgraded(saved))
    assert config.model.likelihood == likelihood and 'loss' not in config.flags()


def test_a_checkpoint_of_todays_layout_loads_gives_its_outputs_and_resumes(tmp_path):
    """A VAE of a mixture prior trained for 2 epochs with --ema 0.9, saved in today's layout (the config in
    its three parts) by the code before the config was typed, with what that code computed from it."""
    path = os.path.join(os.path.dirname(__file__), 'data', 'parts_layout_vae_mog.pth')
    assert set(checkpoint.SAVED_PARTS) <= torch.load(path, weights_only=True).keys()
    model, saved = load_model(path, torch.device('cpu'))
    assert saved['config'].model.prior == 'mog' and saved['config'].training.ema == .9
    expected = torch.load(path.replace('.pth', '.outputs.pt'), weights_only=True)
    gives_the_outputs_it_gave(model, expected)
    model_fn = str(tmp_path / 'm.pth')
    shutil.copy(path, model_fn)
    write_dataset(str(tmp_path / 'data'), n_train=200, n_test=50)
    resumed = train_in_process('--model_fn', model_fn, '--resume', '--n_epochs', '3', '--data_dir',
                               str(tmp_path / 'data'), '--gpu_id', '-1', '--no_log')
    assert [h['epoch'] for h in resumed['history']] == [1, 2, 3]
    assert resumed['config'] == saved['config'].replace(n_epochs=3, data_dir=str(tmp_path / 'data'))
