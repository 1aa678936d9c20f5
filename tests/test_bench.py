"""bench.py's pieces on small inputs: its FLOP counts, its baseline's inputs, its timers."""
import json

import pytest
import torch

import bench
from config import Recipe, make_config
from data_loader import to_input
from helpers import write_dataset
from model import build_model
from trainer import run_epoch


def test_flops_come_from_the_layer_shapes():
    shapes = bench.linear_shapes(build_model(bench.VAE))
    assert shapes == [(784, 400), (400, 40), (20, 400), (400, 784)]  # mu and logvar share one head
    assert bench.forward_flops(shapes) == 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)
    # a training step runs every product three times, except the images' gradient
    assert bench.training_flops(shapes) == 3 * bench.forward_flops(shapes) - 2 * 784 * 400


def test_gated_layers_count_both_of_their_products():
    decoder = bench.linear_shapes(build_model(bench.NLL_VAE).decoder)
    assert decoder == [(40, 600), (300, 600), (300, 784)]  # h and gate of a hidden layer in one product


def test_the_dataloader_baseline_trains_on_the_same_inputs():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    dataset = bench.ToTensorDataset(images)
    for i in range(3):
        x, _ = dataset[i]
        assert x.shape == (1, 28, 28)
        assert torch.allclose(x.view(1, -1), to_input(images[i:i + 1]))


@pytest.mark.slow
def test_timers_run_on_a_small_data_set():
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    cpu = torch.device('cpu')
    for amp, compile in ((False, False), (True, False), (False, True)):
        seconds, model, n_train, n_valid = bench.time_trainer(bench.VAE, images, 64, 3, cpu, amp, compile)
        assert seconds > 0 and (n_train, n_valid) == (240, 60)
        assert bench.time_dataloader(bench.VAE, images, 64, 2, cpu, amp) > 0
        assert bench.inference_throughput(model, images, cpu, min_seconds=.01) > 0
    for dtype in (torch.float32, torch.bfloat16):
        assert bench.matmul_throughput([(64, 784, 40)], cpu, dtype, rounds=1, min_seconds=.01) > 0
    nll = bench.nll_speed(images, cpu, n_images=3, n_samples=40)
    low, high = nll['share_of_matmul_range']
    assert nll['seconds_per_image'] > 0 and 0 < low <= nll['share_of_matmul'] <= high


def test_peak_memory_of_a_real_train_py_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bench.py may be run from any folder
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    assert 50 < bench.peak_training_memory_mb(images, 100, train_flags=[]) < 5000


@pytest.mark.slow
def test_the_timing_run_prints_its_table_and_writes_its_json(tmp_path, capsys):
    data_dir = tmp_path / 'data'
    write_dataset(data_dir / 'FashionMNIST' / 'raw', n_train=600, n_test=10)
    bench.main(['--data_dir', str(data_dir), '--n_epochs', '2', '--out', str(tmp_path / 'bench.json'),
                '--shared_data_mb', '5'])
    with open(tmp_path / 'bench.json') as f:
        results = json.load(f)
    assert results['data'] == 'Fashion-MNIST' and results['n_images'] == 600
    for name in ('autoencoder', 'vae_784_400_20'):
        r = results[name]
        assert r['epoch_seconds'] > 0 and r['achieved_gflops'] > 0 and r['share_of_matmul'] > 0
        # the table's share also counts the images' gradient, which training never computes
        assert r['share_of_matmul_run'] < r['share_of_matmul']
    assert results['vae_784_400_20']['speedup_over_dataloader'] > 0 and list(results['peak_rss_mb']) == ['600', '6']
    out = capsys.readouterr().out
    assert 'of matmul (target >= 70%); ' in out and 'by the products run' in out and 'x faster (target >= 3x)' in out
    assert 'train.py peak RSS, 600 / 6 images' in out
    assert results['folder_read']['n_images'] == 600 and results['folder_read']['first_read_images_per_s'] > 0
    assert 'a folder of 600 PNG images, first read' in out and 'from its cache' in out
    for cost in results['logging'].values():  # the same runs with and without the log
        assert cost['epoch_seconds'] > 0 and cost['epoch_seconds_logged'] > 0 and 0 < cost['log_share'] < 1
    assert results['ranks']['n_ranks'] == 2 and results['ranks']['images_per_second'] > 0
    shared = results['shared_data']
    assert 4 < shared['cache_mb'] < 6 and shared['pss_mb'] > 0 and shared['ratio'] > 0
    assert 'train.py log, autoencoder' in out and '2 ranks (torchrun) against 1 process' in out


def test_a_recipe_step_counts_the_rows_that_its_prior_and_samples_add(monkeypatch):
    batches = []  # of each pass of run_epoch: full batches of the recipe's size, however few the images
    def counting_run_epoch(model, images, batch_size, indices, **options):
        batches.append(len(indices) / batch_size)
        return run_epoch(model, images, batch_size, indices, **options)
    monkeypatch.setattr(bench, 'run_epoch', counting_run_epoch)
    images = torch.randint(0, 256, (25, 1, 28, 28), dtype=torch.uint8)
    recipe = Recipe(dict(model='vae', binarize=True, gated=True, hidden_sizes=[30], btl_size=4, batch_size=10,
                         prior='vamp', n_pseudo=7, use_dropout=True, dropout_p=0., ema=.9))
    vamp = bench.recipe_step_speed(recipe, images, torch.device('cpu'), n_steps=3)
    assert batches == [10, 3]  # the warm-up, then the 3 timed steps
    # the encoder sees the 10 images and the 7 pseudo-inputs in one pass; the decoder the 10 codes
    assert vamp['gemm_shapes'] == [(17, 784, 60), (17, 30, 8), (10, 4, 60), (10, 30, 784)]
    assert vamp['step_ms'] > 0 and 0 < vamp['share_of_matmul']
    iwae = bench.recipe_step_speed(Recipe(dict(model='vae', hidden_sizes=[30], btl_size=4, batch_size=10, iwae_k=5)),
                                   images, torch.device('cpu'), n_steps=3)
    assert iwae['gemm_shapes'][2:] == [(50, 4, 30), (50, 30, 784)]  # 5 samples of each image decoded
    conv = bench.gemm_shapes(build_model(make_config(arch='conv', hidden_sizes=[4, 8], btl_size=2)),
                             torch.rand(3, 784))
    assert conv[:2] == [(3 * 14 * 14, 1 * 9, 4), (3 * 7 * 7, 4 * 9, 8)]  # unfolded 3 x 3 patches by channels
