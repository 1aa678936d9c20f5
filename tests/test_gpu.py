"""train.py and predict.py on a CUDA device. Skipped where there is none (CI has none): run
them where one is, with `python -m pytest tests/test_gpu.py`."""
import json
import os

import pytest
import torch

import predict
from helpers import assert_same_run, train_in_process
from utils import run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

COMMON = ['--hidden_sizes', '64', '32', '--btl_size', '2', '--batch_size', '32']


def valid_losses(checkpoint):
    return [h['valid_loss'] for h in checkpoint['history']]


@pytest.mark.parametrize('flags', [['--model', 'ae'], ['--model', 'vae'], ['--model', 'ae', '--amp'],
                                   ['--model', 'ae', '--compile'], ['--model', 'vae', '--amp', '--compile']])
def test_gpu_training_tracks_cpu_training(flags, data_dir, tmp_path):
    """The same split and initial weights; the batches come from the GPU's own random numbers."""
    gpu, cpu = (valid_losses(train_in_process('--model_fn', str(tmp_path / f'{gpu_id}.pth'), '--data_dir', data_dir,
                                              *COMMON, *flags, '--n_epochs', '4', '--gpu_id', gpu_id))
                for gpu_id in ('0', '-1'))
    assert gpu[-1] < gpu[0]
    assert all(abs(g - c) < .15 * c for g, c in zip(gpu, cpu)), (gpu, cpu)


@pytest.mark.parametrize('flags', [['--model', 'ae'], ['--model', 'vae', '--compile']])
def test_resume_on_the_gpu_gives_the_same_weights(flags, data_dir, tmp_path):
    common = ['--data_dir', data_dir, *COMMON, *flags, '--gpu_id', '0']
    whole = train_in_process('--model_fn', str(tmp_path / 'whole.pth'), *common, '--n_epochs', '4')
    part = str(tmp_path / 'part.pth')
    train_in_process('--model_fn', part, *common, '--n_epochs', '2')
    assert_same_run(whole, train_in_process('--model_fn', part, '--resume', '--n_epochs', '4'))


def test_a_gpu_checkpoint_evaluates_alike_on_the_gpu_and_the_cpu(data_dir, tmp_path):
    model_fn = str(tmp_path / 'vae.pth')
    train_in_process('--model_fn', model_fn, '--data_dir', data_dir, *COMMON, '--model', 'vae', '--n_epochs', '2',
                     '--gpu_id', '0')
    metrics = {}
    for gpu_id in ('0', '-1'):
        out_dir = tmp_path / gpu_id
        run_cli(lambda: predict.main(['--model_fn', model_fn, '--out_dir', str(out_dir), '--gpu_id', gpu_id,
                                      '--what', 'metrics', 'latent', 'samples']), 'predict.py')
        assert {'latent.png', 'samples.png'} <= set(os.listdir(out_dir))
        with open(out_dir / 'metrics.json') as f:
            metrics[gpu_id] = json.load(f)
    gpu, cpu = metrics['0'], metrics['-1']
    # The same weights and images: only the order of the floating-point operations differs
    # (and the random draws of the IWAE estimate).
    for name in ('sse_per_image', 'neg_elbo', 'pca_sse_per_image'):
        assert gpu[name] == pytest.approx(cpu[name], rel=1e-3), name
    assert gpu['iwae_cross_entropy'] == pytest.approx(cpu['iwae_cross_entropy'], rel=.02)
    assert abs(gpu['knn_accuracy'] - cpu['knn_accuracy']) <= .05
