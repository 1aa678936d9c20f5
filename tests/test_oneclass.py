"""oneclass.py: the one-class protocol through its real command line on a tiny data set."""
import json
import os

import numpy as np
import pytest
import torch

import analysis
import anomaly
import oneclass
from checkpoint import load_checkpoint
from config import DEFAULTS
from data_loader import write_idx
from helpers import assert_log_matches, expect_usage_error, make_images, without_times, write_dataset
from utils import run_cli

FAST = ['--arch', 'mlp', '--hidden_sizes', '64', '32', '--btl_size', '8', '--n_epochs', '3', '--batch_size', '32',
        '--gpu_id', '-1']


@pytest.fixture(scope='module')
def fashion_dir(tmp_path_factory):
    """A data folder that --dataset fashion_mnist finds: 400 training and 100 test images."""
    root = tmp_path_factory.mktemp('fashion')
    write_dataset(os.path.join(root, 'FashionMNIST', 'raw'))
    return str(root)


def run(fashion_dir, out_dir, *flags):
    run_cli(lambda: oneclass.main(['--data_dir', fashion_dir, '--out_dir', str(out_dir), *FAST, *flags]),
            'oneclass.py')
    with open(out_dir / 'oneclass.json') as f:
        return json.load(f)


def test_roc_auc_by_hand_with_ties():
    # Anomalies score 3, 2, 2; normals 2, 1. Pairs (anomaly above normal): 3>2, 3>1, 2=2 (1/2), 2>1, 2=2 (1/2),
    # 2>1: 5 of 6.
    scores, is_anomaly = torch.tensor([3., 2., 2., 2., 1.]), torch.tensor([1, 1, 1, 0, 0])
    assert analysis.roc_auc(scores, is_anomaly) == pytest.approx(5 / 6)
    assert analysis.roc_auc(torch.ones(4), torch.tensor([1, 0, 1, 0])) == .5  # all tied: chance


def test_a_model_of_one_class_tells_the_other_class_apart(tmp_path):
    """Two classes of bars in different places: a model trained on one must rank the other
    class's test images as anomalies (AUROC above 0.9) by every score."""
    data = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    data.mkdir(parents=True)
    for prefix, n, seed in (('train', 300, 0), ('t10k', 100, 1)):
        images, labels = make_images(n * 5, seed)
        keep = np.isin(labels, [2, 7])[:]
        write_idx(str(data / f'{prefix}-images-idx3-ubyte'), images[keep][:n])
        write_idx(str(data / f'{prefix}-labels-idx1-ubyte'), labels[keep][:n])
    summary = run(str(tmp_path / 'data'), tmp_path / 'out', '--classes', '2', '--model', 'vae', '--iw_samples', '20',
                  '--n_epochs', '20')  # the ELBO's scores need a VAE past its first noisy epochs
    aurocs = summary['per_class']['2']
    assert set(aurocs) == {'recon', 'neg_elbo', 'iwae', 'code_gauss', 'code_knn', 'feature_gauss', 'pca_recon',
                           'pixel_knn'}
    assert min(aurocs.values()) > .9, aurocs


@pytest.mark.slow
def test_the_protocol_writes_its_table_json_and_figure_and_a_second_run_reuses_the_models(fashion_dir, tmp_path,
                                                                                          capsys):
    out_dir = tmp_path / 'out'
    summary = run(fashion_dir, out_dir, '--classes', '0', '3')
    assert list(summary['per_class']) == ['0', '3']
    assert set(summary['mean']) == {'recon', 'code_gauss', 'code_knn', 'feature_gauss', 'pca_recon', 'pixel_knn'}
    assert summary['mean']['recon'] == pytest.approx(np.mean([summary['per_class'][c]['recon'] for c in '03']))
    assert summary['published_mean_percent'] == {}  # two of ten classes: not comparable with the papers
    printed = capsys.readouterr().out
    assert 'mean' in printed and f'wrote {out_dir / "oneclass.png"}' in printed
    assert printed.splitlines()[2].startswith('ROC AUC, %')  # the table's unit, after a line per class
    assert [line.split(' (')[0] for line in printed.splitlines()[:2]] == ['class 0 T-shirt/top', 'class 3 Dress']
    assert all(f'(trained {out_dir / f"class_{c}.pth"}):' in line for c, line in zip((0, 3), printed.splitlines()))
    assert (out_dir / 'oneclass.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    trained = {c: (out_dir / f'class_{c}.pth').read_bytes() for c in (0, 3)}
    argv = ['--data_dir', fashion_dir, '--out_dir', str(out_dir), *FAST, '--classes', '0', '3']
    expect_usage_error(oneclass.main, 'oneclass.py', argv, capsys, 'oneclass.json exists; give --overwrite')
    again = run(fashion_dir, out_dir, '--classes', '0', '3', '--overwrite')
    assert again['per_class'] == summary['per_class']
    assert all(f'(reused {out_dir / f"class_{c}.pth"}):' in line
               for c, line in zip((0, 3), capsys.readouterr().out.splitlines()))
    assert all((out_dir / f'class_{c}.pth').read_bytes() == trained[c] for c in (0, 3))
    # one log per class under the one folder, which `tensorboard --logdir out` shows together
    for c in (0, 3):
        history = load_checkpoint(str(out_dir / f'class_{c}.pth'))['history']
        assert_log_matches(str(out_dir / f'class_{c}_log'), history)


@pytest.mark.slow
def test_an_interrupted_class_is_resumed_where_it_stopped(fashion_dir, tmp_path):
    out_dir = tmp_path / 'out'
    whole = tmp_path / 'whole'
    run(fashion_dir, whole, '--classes', '5')
    # The state a stop after epoch 1 of 3 leaves: the checkpoint of epoch 1 (train.py saves after every epoch).
    run(fashion_dir, out_dir, '--classes', '5', '--n_epochs', '1')
    (out_dir / 'oneclass.json').unlink()  # an interrupted run writes no results
    checkpoint = torch.load(out_dir / 'class_5.pth', weights_only=True)
    checkpoint['training_config']['n_epochs'] = 3  # what the full command asks for
    torch.save(checkpoint, out_dir / 'class_5.pth')
    resumed = run(fashion_dir, out_dir, '--classes', '5')
    history = torch.load(out_dir / 'class_5.pth', weights_only=True)['history']
    assert [h['epoch'] for h in history] == [1, 2, 3]
    assert without_times(history) == without_times(torch.load(whole / 'class_5.pth', weights_only=True)['history'])
    assert resumed['per_class'] == run(fashion_dir, whole, '--classes', '5', '--overwrite')['per_class']


@pytest.mark.slow
def test_other_flags_in_the_same_folder_are_refused_unless_overwrite(fashion_dir, tmp_path, capsys):
    out_dir = tmp_path / 'out'
    run(fashion_dir, out_dir, '--classes', '1')
    argv = ['--data_dir', fashion_dir, '--out_dir', str(out_dir), *FAST, '--classes', '1', '--btl_size', '3']
    expect_usage_error(oneclass.main, 'oneclass.py', argv, capsys, 'oneclass.json exists; give --overwrite')
    (out_dir / 'oneclass.json').unlink()
    expect_usage_error(oneclass.main, 'oneclass.py', argv, capsys,
                       'class_1.pth was trained with --btl_size 8 where this run gives --btl_size 3; give '
                       '--overwrite')
    run(fashion_dir, out_dir, '--classes', '1', '--btl_size', '3', '--overwrite')
    assert torch.load(out_dir / 'class_1.pth', weights_only=True)['model_config']['btl_size'] == 3


def test_a_hidden_layer_too_wide_for_feature_gauss_is_one_line_and_keeps_the_checkpoint(fashion_dir, tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.setattr(anomaly, 'MAX_FEATURE_WIDTH', 31)  # FAST's last hidden layer has 32 units
    expect_usage_error(oneclass.main, 'oneclass.py', ['--data_dir', fashion_dir, '--out_dir', str(tmp_path / 'o'),
                                                      '--classes', '0', *FAST], capsys,
                       "--scores feature_gauss: the encoder's last hidden layer has 32 features")
    assert (tmp_path / 'o' / 'class_0.pth').exists()


def test_a_class_with_too_few_images_is_refused(tmp_path, capsys):
    data = tmp_path / 'FashionMNIST' / 'raw'
    data.mkdir(parents=True)
    images, labels = make_images(50, 0)
    labels[labels == 4] = 5
    labels[0] = 4  # a single image of class 4
    for prefix in ('train', 't10k'):
        write_idx(str(data / f'{prefix}-images-idx3-ubyte'), images)
        write_idx(str(data / f'{prefix}-labels-idx1-ubyte'), labels)
    expect_usage_error(oneclass.main, 'oneclass.py', ['--data_dir', str(tmp_path), '--classes', '4', '--out_dir',
                                                      str(tmp_path / 'o')], capsys, 'only 1 training image(s)')


def test_the_flags_passed_through_replace_the_recipes(tmp_path):
    args = oneclass.define_argparser().parse_args(['--out_dir', str(tmp_path)])
    config, options, given = oneclass.class_config(args, 3, ['--btl_size', '8', '--noise', 'gaussian', '--n_epochs',
                                                             '3', '--btl_size', '4'])
    # --btl_size given twice counts once, its last value; --n_epochs replaces the recipe's --min_steps
    assert config.model.btl_size == 4 and config.model.noise == 'gaussian' and config.training.n_epochs == 3
    assert config.model.arch == 'conv' and config.model.hidden_sizes == [32, 64, 128]
    assert config.training.min_steps == DEFAULTS['min_steps'] and 'min_steps' not in given
    assert config.data.target_labels == [3] and options.model_fn == str(tmp_path / 'class_3.pth')
    recipe, _, _ = oneclass.class_config(args, 3, [])
    assert recipe == oneclass.RECIPE.config.replace(target_labels=[3], dataset='fashion_mnist')
