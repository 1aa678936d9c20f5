"""bench.py's pieces on small inputs: its FLOP counts, its baseline's inputs, its timers."""
import torch

import bench
from data_loader import to_input
from model import build_model


def test_flops_come_from_the_layer_shapes():
    shapes = bench.linear_shapes(build_model(bench.VAE))
    assert shapes == [(784, 400), (400, 40), (20, 400), (400, 784)]  # mu and logvar share one head
    assert bench.forward_flops(shapes) == 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)


def test_the_dataloader_baseline_trains_on_the_same_inputs():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    dataset = bench.ToTensorDataset(images)
    for i in range(3):
        x, _ = dataset[i]
        assert x.shape == (1, 28, 28)
        assert torch.allclose(x.view(1, -1), to_input(images[i:i + 1]))


def test_timers_run_on_a_small_data_set():
    images = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8)
    cpu = torch.device('cpu')
    seconds, model, n_train, n_valid = bench.time_trainer(bench.VAE, images, 64, 3, cpu)
    assert seconds > 0 and (n_train, n_valid) == (240, 60)
    assert bench.time_dataloader(bench.VAE, images, 64, 2, cpu) > 0
    assert bench.inference_throughput(model, images, cpu, min_seconds=.01) > 0
    assert bench.matmul_throughput([(784, 40)], 64, cpu, rounds=1, min_seconds=.01) > 0


def test_peak_memory_of_a_real_train_py_run():
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    assert 50 < bench.peak_training_memory_mb(images, 100) < 5000
