"""Every --what of predict.py on a tiny generated data set."""
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import analysis
import predict
import train
from data_loader import load_dataset, write_image_folder
from helpers import TINY, expect_usage_error, is_share_of, iw_samples_flag
from utils import run_cli

FIGURES = {'recon': ['reconstructions.png'], 'latent': ['latent.png'], 'boundary': ['boundary.png'],
           'manifold': ['manifold.png'], 'samples': ['samples.png'], 'interp': ['interp.png'],
           'anomaly': ['anomaly_hist.png', 'anomalies.png'], 'metrics': [], 'curves': ['curves.png'], 'codes': []}
ARRAYS = {'samples': ['samples.npz'], 'codes': ['codes.npz']}  # beside the figures, for numpy
METRICS = {'dataset', 'n_test', 'sse_per_image', 'bce_per_image', 'knn_accuracy', 'pca_components',
           'pca_sse_per_image', 'pca_bce_per_image', 'pca_knn_accuracy', 'train_knn_accuracy',
           'pca_train_knn_accuracy'}
AE_METRICS = {'recon'}
VAE_METRICS = {'recon_at_drawn_z', 'kl', 'neg_elbo', 'active_units', 'iwae_samples', 'iwae_cross_entropy',
               'iwae_cross_entropy_std_error', 'likelihood', 'nats_of_log_px'}


@pytest.fixture(scope='module')
def models(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp('models')
    paths = {}
    for name, flags in {'vae2': ['--model', 'vae', '--btl_size', '2', '--target_labels', '0', '1', '2', '3'],
                        'ae3': ['--model', 'ae', '--btl_size', '3']}.items():
        paths[name] = str(folder / f'{name}.pth')
        run_cli(lambda: train.main(['--model_fn', paths[name], '--data_dir', data_dir, '--verbose', '0',
                                    *TINY, *flags]), 'train.py')
    return paths


def run_predict(model_fn, out_dir, *flags):
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--out_dir', str(out_dir), '--gpu_id', '-1',
                                  *iw_samples_flag(model_fn, 5), *flags]), 'predict.py')
    with open(os.path.join(out_dir, 'metrics.json')) as f:
        return json.load(f)


@pytest.mark.parametrize('what', predict.WHAT)
def test_each_what_writes_valid_figures(models, what, tmp_path, capsys):
    metrics = run_predict(models['vae2'], tmp_path, '--what', what)
    assert sorted(os.listdir(tmp_path)) == sorted(FIGURES[what] + ARRAYS.get(what, []) + ['metrics.json'])
    for name in FIGURES[what]:
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == 'PNG' and min(image.size) > 100
    out = capsys.readouterr().out
    assert f'wrote {tmp_path / "metrics.json"}' in out
    if what == 'metrics':
        assert METRICS | VAE_METRICS <= metrics.keys() and not AE_METRICS & metrics.keys()
        assert metrics['iwae_samples'] == 5 and metrics['pca_components'] == 2
        assert metrics['iwae_cross_entropy'] <= metrics['neg_elbo']  # grayscale pixels: not nats of -log p(x)
        assert is_share_of(metrics['knn_accuracy'], 40)  # of the 40 test images of the classes trained on
        assert 'PCA-2' in out and 'IWAE' in out
    if what in ARRAYS:  # numpy reads them in one line
        arrays = np.load(tmp_path / ARRAYS[what][0])
        n, image = (64, 'images') if what == 'samples' else (40, 'reconstructions')  # 4 classes of 10 test images
        assert arrays['codes'].shape == (n, 2) and arrays[image].shape == (n, 1, 28, 28)
    if what == 'anomaly':
        # of the pairs of the 40 test images of classes trained on and the 60 others, a tie counting half
        assert is_share_of(metrics['anomaly_roc_auc'], 2 * 40 * 60)
        assert 'anomaly ROC AUC (classes 0 1 2 3 normal)' in out


def test_metrics_cover_the_trained_classes_and_anomaly_all(models, tmp_path):
    metrics = run_predict(models['vae2'], tmp_path, '--what', 'metrics', 'anomaly')
    assert metrics['n_test'] == 40  # 4 of the 10 classes of the 100 test images
    assert 'anomaly_roc_auc' in metrics


def test_the_anomaly_figure_takes_any_score_of_the_one_class_protocol_and_names_it(models, tmp_path, capsys):
    metrics = run_predict(models['vae2'], tmp_path / 'vae', '--what', 'anomaly', '--anomaly_score', 'code_gauss')
    assert metrics['anomaly_score'] == 'code_gauss' and is_share_of(metrics['anomaly_roc_auc'], 2 * 40 * 60)
    assert 'anomaly score: code_gauss: -log density of the code' in capsys.readouterr().out
    assert run_predict(models['ae3'], tmp_path / 'ae', '--what', 'anomaly')['anomaly_score'] == 'recon'
    expect_usage_error(predict.main, 'predict.py', ['--model_fn', models['ae3'], '--out_dir', str(tmp_path / 'x'),
                                                    '--what', 'anomaly', '--anomaly_score', 'iwae'], capsys,
                       '--anomaly_score iwae: needs a VAE')
    assert not (tmp_path / 'x').exists()


def test_a_test_set_alone_is_enough_for_the_figures_that_compare_with_no_training_image(models, data_dir,
                                                                                         tmp_path, capsys):
    raw = tmp_path / 'data' / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
        shutil.copy(os.path.join(data_dir, 'MNIST', 'raw', name), raw)
    flags = ['--dataset', 'mnist', '--data_dir', str(tmp_path / 'data')]
    for model in ('vae2', 'ae3'):
        metrics = run_predict(models[model], tmp_path / model, *flags, '--what', 'recon', 'latent', 'interp', 'anomaly')
        assert metrics['n_test'] == (40 if model == 'vae2' else 100) and 'anomaly_score' in metrics
    for what in (['metrics'], ['anomaly', '--anomaly_score', 'code_knn']):  # asked for, and needing them: refused
        expect_usage_error(predict.main, 'predict.py', ['--model_fn', models['ae3'], '--out_dir', str(tmp_path / 'x'),
                                                        *flags, '--what', *what], capsys,
                           f'--what {what[0]} needs the training images: mnist: train-images-idx3-ubyte[.gz] not found')
        assert not (tmp_path / 'x').exists()  # nothing written
    # Left to predict.py: what needs the training images is skipped in one line, the rest is made.
    run_predict(models['ae3'], tmp_path / 'all', *flags)
    assert 'skipped what needs the training images' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'all')) == ['anomalies.png', 'anomaly_hist.png', 'curves.png', 'interp.png',
                                                    'latent.png', 'metrics.json', 'reconstructions.png']


def test_default_what_for_a_wider_code_skips_the_plane_figures(models, tmp_path):
    metrics = run_predict(models['ae3'], tmp_path)
    written = set(os.listdir(tmp_path))
    assert 'boundary.png' not in written and 'manifold.png' not in written
    assert {'latent.png', 'samples.png', 'interp.png', 'curves.png'} <= written
    assert METRICS | AE_METRICS <= metrics.keys() and not VAE_METRICS & metrics.keys()
    assert 'anomaly_roc_auc' not in metrics  # trained on every class: nothing is an anomaly
    assert metrics['pca_components'] == 3


def test_a_model_worse_than_pca_is_told_so_in_one_line_per_number(data_dir, tmp_path, capsys):
    model_fn = str(tmp_path / 'weak.pth')  # one epoch: far from PCA's reconstructions
    run_cli(lambda: train.main(['--model_fn', model_fn, '--data_dir', data_dir, '--verbose', '0', '--btl_size', '3',
                                '--hidden_sizes', '64', '32', '--n_epochs', '1', '--gpu_id', '-1']), 'train.py')
    capsys.readouterr()
    metrics = run_predict(model_fn, tmp_path / 'out', '--what', 'metrics')
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('predict.py: warning')]
    assert metrics['sse_per_image'] > metrics['pca_sse_per_image'] * 1.1  # beyond the spread of a small test set
    assert any('reconstructs worse than PCA-3' in line and '--n_epochs' in line for line in err)
    knn = metrics['knn_accuracy'], metrics['pca_knn_accuracy']
    worse_codes = predict.verdict(*knn, True, metrics['n_test']) == 'worse'
    assert any('5-NN accuracy of the codes is below' in line for line in err) is worse_codes
    assert len(err) == 1 + worse_codes


def test_below_baseline_says_nothing_of_a_model_that_beats_pca_and_names_the_likely_cause():
    m = analysis.Metrics(n_test=100, own_losses={'recon': 1.}, sse_per_image=1., bce_per_image=90.,
                         pca_components=2, pca_sse_per_image=2., pca_bce_per_image=95., knn_accuracy=.9,
                         pca_knn_accuracy=.8, train_knn_accuracy=.7, pca_train_knn_accuracy=.85)
    assert predict.below_baseline(m) == []
    # worse, but within the seed-to-seed spread of 100 test images (10%): the table says nothing, nor do the warnings
    assert predict.below_baseline(replace(m, sse_per_image=2.1, knn_accuracy=.75)) == []
    both = predict.below_baseline(replace(m, sse_per_image=3., knn_accuracy=.7))
    assert len(both) == 2 and all('under-trained' in line for line in both)
    # codes that reconstruct as well as PCA's are not called under-trained
    codes_only, = predict.below_baseline(replace(m, knn_accuracy=.7))
    assert 'under-trained' not in codes_only and 'reconstruct as well as PCA' in codes_only
    # ... and codes that keep the training images' classes apart as well as PCA's, only not the test images'
    new_images_only, = predict.below_baseline(replace(m, knn_accuracy=.7, train_knn_accuracy=.85))
    assert 'under-trained' not in new_images_only
    assert '(0.8500 against 0.8500, leave-one-out)' in new_images_only and 'more training images' in new_images_only
    assert 'keep the classes apart as well' in predict.below_baseline(replace(m, knn_accuracy=.7,
                                                                              train_knn_accuracy=.8))[0]
    # unlabelled data: no kNN, nothing to say of it
    assert predict.below_baseline(replace(m, knn_accuracy=None, pca_knn_accuracy=None)) == []
    # images other than those the model was trained on: that is said, not the training blamed
    other_data = predict.below_baseline(replace(m, sse_per_image=3., knn_accuracy=.7), 'trained on mnist, ...')
    assert len(other_data) == 2 and all('trained on mnist' in line and 'under-trained' not in line
                                        for line in other_data)


def test_the_figures_show_one_test_image_of_each_class_in_turn(models, tmp_path):
    model, checkpoint = predict.load_model(models['vae2'], torch.device('cpu'))
    args = predict.define_argparser().parse_args(['--model_fn', models['vae2'], '--n_images', '10'])
    report = predict.Report(model, checkpoint, args, torch.device('cpu'), str(tmp_path))
    chosen, names = report.shown
    assert report.labels[chosen].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]  # the 4 classes trained on, in turn
    assert names == [str(c) for c in report.labels[chosen].tolist()]
    assert torch.equal(predict.Report(model, checkpoint, args, torch.device('cpu'), str(tmp_path)).shown[0], chosen)


@pytest.mark.parametrize('ours, pca, higher_is_better, n_test, word', [
    (24.46, 36.14, False, 10000, '-32.3%, better'),
    (104.1, 107.6, False, 10000, '-3.3%, better'),
    (104.1, 107.6, False, 300, '-3.3%, within the seed-to-seed spread (10%)'),
    (.6522, .7810, True, 10000, '-16.5%, worse'),
    (.75, .74, True, 10000, '+1.4%, within the seed-to-seed spread (3%)'),
])
def test_a_margin_over_pca_is_called_a_gain_only_beyond_the_seed_to_seed_spread(ours, pca, higher_is_better,
                                                                                n_test, word):
    assert predict.margin(ours, pca, higher_is_better, n_test) == word


def test_predict_on_other_data_than_the_model_was_trained_on_says_so_in_one_line(models, data_dir, tmp_path, capsys,
                                                                                monkeypatch):
    # the MNIST-like test images written as a folder: another data set for a model trained on the IDX files
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # the folder's cache, not in the home folder
    images, labels = load_dataset('mnist', data_dir, False)
    folder = write_image_folder(str(tmp_path / 'images'), images, labels)
    run_predict(models['ae3'], tmp_path / 'out', '--dataset', 'folder', '--data_dir', folder, '--what', 'recon')
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith('note:')]
    assert notes == [f'note: trained on mnist, evaluated on the folder {folder}, its images converted to the '
                     f"model's 1 x 28 x 28"]


FASHION_MNIST = '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(FASHION_MNIST), reason='needs Fashion-MNIST (apt-get install '
                                                              'dataset-fashion-mnist); .ci/run installs it')
@pytest.mark.parametrize('kind', ['mlp_ae', 'vamp_vae', 'conv_ae_colour_folder'])
def test_the_figures_of_three_kinds_of_model_say_what_they_show(kind, tmp_path, capsys, monkeypatch):
    """An MLP AE on Fashion-MNIST, a VAE with a VampPrior, a conv AE on a colour class folder: every
    figure of predict.py is made (they stay in this test's folder to be looked at), the images shown are
    one of each class in turn, and the titles name the model and the data."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    fashion = ['--dataset', 'fashion_mnist', '--target_labels', '0', '1', '7']
    flags = {'mlp_ae': fashion,
             'vamp_vae': [*fashion, '--model', 'vae', '--prior', 'vamp', '--n_pseudo', '20', '--use_dropout',
                          '--dropout_p', '0'],
             'conv_ae_colour_folder': ['--dataset', 'folder', '--data_dir', str(tmp_path / 'colour'), '--arch', 'conv']}
    if kind == 'conv_ae_colour_folder':  # 300 Fashion-MNIST test images of 3 classes, each tinted, as class folders
        images, labels = load_dataset('fashion_mnist', './data', False)
        keep = torch.isin(labels, torch.tensor([0, 1, 7])).nonzero().flatten()[:300]
        tint = torch.tensor([[1., .6, .3], [.3, 1., .6], [.6, .3, 1.]])[torch.arange(300) % 3].view(300, 3, 1, 1)
        write_image_folder(str(tmp_path / 'colour'), (images[keep].float() * tint).to(torch.uint8), labels[keep],
                           ['T-shirt', 'Trouser', *'23456', 'Sneaker', *'89'])
    model_fn = str(tmp_path / f'{kind}.pth')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--btl_size', '2', '--n_epochs', '3', '--gpu_id', '-1',
                                '--verbose', '0', *flags[kind]]), 'train.py')
    capsys.readouterr()
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', *iw_samples_flag(model_fn, 10)]),
            'predict.py')
    out_dir = tmp_path / f'{kind}_predict'
    figures_made = {name for name in os.listdir(out_dir) if name.endswith('.png')}
    assert figures_made == {'reconstructions.png', 'latent.png', 'boundary.png', 'manifold.png', 'samples.png',
                            'interp.png', 'anomaly_hist.png', 'anomalies.png', 'curves.png'}
    model, checkpoint = predict.load_model(model_fn, torch.device('cpu'))
    args = predict.define_argparser().parse_args(['--model_fn', model_fn])
    report = predict.Report(model, checkpoint, args, torch.device('cpu'), str(out_dir))
    classes = [0, 1, 2] if kind == 'conv_ae_colour_folder' else [0, 1, 7]
    assert report.labels[report.shown[0]].tolist() == (classes * 4)[:10]  # one of each class in turn
    assert report.subject == f'{kind}.pth ({type(model).__name__}) on {checkpoint["config"].data.dataset}'
    assert 'model against PCA' in capsys.readouterr().out
