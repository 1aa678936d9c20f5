"""recipes.py: its targets judged on made-up results, and the whole pipeline through the real
scripts on a tiny data set."""
import json

import pytest
import torch

import flags
import recipes
from checkpoint import load_checkpoint
from config import Recipe
from helpers import assert_log_matches, write_dataset
from model import build_model
from utils import CliError


def recipe_result(**metrics):
    return {'train_seconds': 60., **metrics}


def test_recipe_targets_are_judged_against_their_baselines():
    results = {
        'ae2': recipe_result(sse_per_image=5., pca_sse_per_image=10., knn_accuracy=.7),
        'ae30': recipe_result(sse_per_image=6., pca_sse_per_image=10.),
        'vae20': recipe_result(neg_elbo=97., iwae_cross_entropy=96.),
        'classic_vae20': recipe_result(neg_elbo=100., iwae_cross_entropy=99.),
        'anomaly': recipe_result(anomaly_roc_auc=.8, train_seconds=16 * 60.),
        'binarized_vae': recipe_result(iwae_nll=228.5, iwae_nll_std_error=.5, iwae_samples=5000),
        'binarized_iwae': recipe_result(iwae_nll=227., iwae_nll_std_error=.5, iwae_samples=5000,
                                        train_seconds=90 * 60.),
    }
    rows = {label: (value, note) for label, value, note in recipes.recipe_rows(results)}
    assert rows['AE 2-d: squared error per image vs PCA-2'] == ('5.00 vs 10.00', '0.50x, target <= 0.55x: met')
    assert rows['AE 30-d: squared error per image vs PCA-30'][1] == '0.60x, target <= 0.55x: NOT MET'
    assert rows['AE 2-d: 5-NN accuracy of the codes'] == ('0.700', 'target >= 0.75: NOT MET')
    assert rows['VAE 20-d: negative ELBO vs classic 784-400-20'][1] == '3.00% below, target >= 2%: met'
    assert rows['VAE 20-d: IWAE bound, a cross-entropy of grayscale pixels'] == ('96.00 vs 99.00', '')
    assert rows['train time of ae2'][1] == 'target <= 15 min: met'
    assert rows['train time of anomaly'] == ('16.0 min', 'target <= 15 min: NOT MET')
    assert rows['binarized_vae: test -log p(x), 5000 samples, vs VAE, N(0, I) prior'] == (
        '228.50 +- 0.50 vs 228.70', 'target <= 228.70: met')
    assert rows['binarized_iwae: test -log p(x), 5000 samples, vs Exemplar VAE'] == (
        '227.00 +- 0.50 vs 226.75', 'target <= 226.75: NOT MET')
    assert rows['train time of binarized_iwae'] == ('90.0 min', '')  # as long as the protocol takes


@pytest.mark.slow
def test_some_recipes_alone(tmp_path, capsys):
    data_dir = tmp_path / 'data'
    write_dataset(data_dir / 'FashionMNIST' / 'raw', n_train=200, n_test=60)
    recipes.main(['--recipes', 'binarized_vamp', '--recipe_epochs', '1', '--data_dir', str(data_dir),
                  '--recipes_dir', str(tmp_path / 'recipes')])
    results = json.loads((tmp_path / 'recipes' / 'recipes.json').read_text())
    assert list(results) == ['binarized_vamp'] and results['binarized_vamp']['iwae_samples'] == recipes.SHORT_IW_SAMPLES
    out = capsys.readouterr().out
    assert 'binarized_vamp: test -log p(x), 10 samples, vs VAE, VampPrior' in out and 'AE 2-d' not in out


@pytest.mark.parametrize('name', list(recipes.RECIPES))
def test_every_recipe_is_a_config_that_train_py_accepts_and_builds(name):
    config, _, _ = flags.parse(['--model_fn', 'r.pth', *flags.as_flags(recipes.RECIPES[name].changes)])
    # the flags that train.py would be given give the same config (its classes by name)
    recipe = recipes.RECIPES[name].config
    assert config.replace(target_labels=recipe.data.target_labels) == recipe
    assert config.data.target_labels == (None if recipe.data.target_labels is None else
                                         [str(c) for c in recipe.data.target_labels])
    with torch.device('meta'):
        build_model(config)


# One recipe of each kind: the AutoEncoders, the VAEs of grayscale pixels, the anomaly recipe, a binarized VAE.
THROUGH_THE_SCRIPTS = ['ae2', 'vae20', 'classic_vae20', 'anomaly', 'binarized_iwae_fast']


@pytest.mark.slow
def test_recipes_train_and_evaluate_through_the_real_scripts(tmp_path, capsys):
    data_dir = tmp_path / 'data'
    write_dataset(data_dir / 'FashionMNIST' / 'raw', n_train=200, n_test=60)
    recipes_dir = tmp_path / 'recipes'
    # CI runs the recipes in fp32; this test runs them with --amp
    recipes.main(['--recipes', *THROUGH_THE_SCRIPTS, '--recipe_epochs', '1', '--amp', '--data_dir', str(data_dir),
                  '--recipes_dir', str(recipes_dir)])
    with open(recipes_dir / 'recipes.json') as f:
        results = json.load(f)
    assert list(results) == THROUGH_THE_SCRIPTS
    for name, result in results.items():
        own_classes = 4 if name == 'anomaly' else 10  # its metrics cover the classes it was trained on
        assert result['train_flags'].endswith('--n_epochs 1 --amp') and result['n_test'] == 6 * own_classes
        assert (recipes_dir / f'{name}.pth').is_file()
        # each recipe's log beside its checkpoint, with the test metrics that predict.py added
        scalars, _ = assert_log_matches(str(recipes_dir / f'{name}_log'),
                                        load_checkpoint(str(recipes_dir / f'{name}.pth'))['history'])
        assert scalars['test/sse_per_image'][0][1] == pytest.approx(result['sse_per_image'], rel=1e-6)
    assert 'anomaly_roc_auc' in results['anomaly'] and 'iwae_cross_entropy' in results['vae20']
    out = capsys.readouterr().out
    assert 'VAE 20-d: negative ELBO vs classic 784-400-20' in out and 'train time of anomaly' in out
    assert '--recipe_epochs 1 only' in out


def test_a_failing_recipe_ends_with_the_scripts_own_error(tmp_path):
    write_dataset(tmp_path, n_train=20, n_test=10, compress=False)
    (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'not an IDX file')
    with pytest.raises(CliError, match=r'train-images-idx3-ubyte: corrupt IDX file'):
        recipes.main(['--data_dir', str(tmp_path), '--recipes_dir', str(tmp_path / 'r')])


def test_a_second_run_leaves_the_first_ones_files_unless_told_to_overwrite(tmp_path):
    data_dir = tmp_path / 'data'
    write_dataset(data_dir / 'FashionMNIST' / 'raw', n_train=200, n_test=60)
    recipes_dir = tmp_path / 'recipes'
    recipes_dir.mkdir()
    (recipes_dir / 'ae2.pth').write_bytes(b'a checkpoint of an earlier run')
    with pytest.raises(CliError, match=r'ae2\.pth: not a readable checkpoint'):
        recipes.main(['--recipe_epochs', '1', '--data_dir', str(data_dir), '--recipes_dir', str(recipes_dir)])
    assert (recipes_dir / 'ae2.pth').read_bytes() == b'a checkpoint of an earlier run'


@pytest.mark.slow
def test_a_recipe_goes_on_where_its_checkpoint_stopped_and_refuses_changed_flags(tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / 'data'
    write_dataset(data_dir / 'FashionMNIST' / 'raw', n_train=200, n_test=60)
    recipes_dir = tmp_path / 'recipes'
    common = ['--recipes', 'ae30', '--data_dir', str(data_dir), '--recipes_dir', str(recipes_dir)]
    monkeypatch.setitem(recipes.RECIPES, 'ae30', Recipe(dict(btl_size=3, hidden_sizes=[16], n_epochs=3)))
    recipes.main([*common, '--recipe_epochs', '1'])
    first = torch.load(recipes_dir / 'ae30.pth', weights_only=True)
    # The same recipe asked for more epochs is another recipe: refused by name, the checkpoint kept.
    with pytest.raises(CliError, match=r'ae30\.pth was trained with --n_epochs 1 where this run gives '
                                       r'--n_epochs 3; give --overwrite'):
        recipes.main(common)
    assert torch.equal(torch.load(recipes_dir / 'ae30.pth', weights_only=True)['model']['encoder.0.block.0.weight'],
                       first['model']['encoder.0.block.0.weight'])
    # A run stopped after epoch 1 of 3: the next run trains epochs 2 and 3.
    first['training_config']['n_epochs'] = 3
    torch.save(first, recipes_dir / 'ae30.pth')
    capsys.readouterr()
    recipes.main(common)
    assert 'ae30: 1 of 3 epochs trained in' in capsys.readouterr().out
    resumed = torch.load(recipes_dir / 'ae30.pth', weights_only=True)
    assert [h['epoch'] for h in resumed['history']] == [1, 2, 3]
    results = json.loads((recipes_dir / 'recipes.json').read_text())
    assert results['ae30']['train_seconds'] == pytest.approx(sum(h['seconds'] for h in resumed['history']))
    # Run again, the finished recipe is reused as it is, and evaluated afresh.
    recipes.main(common)
    assert f'ae30: {recipes_dir / "ae30.pth"} holds the finished run of these flags' in capsys.readouterr().out
    again = torch.load(recipes_dir / 'ae30.pth', weights_only=True)
    assert again['history'] == resumed['history']
