import pytest
import torch
import torch.nn as nn

from config import make_config
from helpers import SMALL_AE, ScalarModel, make_images
from model import build_model
from trainer import Trainer, WeightAverage, compiled, run_epoch
from utils import EVAL_BATCH_SIZE


class ScriptedOptimizer(torch.optim.SGD):
    """Sets w to the next scripted value at every step (one step per epoch here)."""

    def __init__(self, params, values):
        super().__init__(params, lr=0.)
        self.values = iter(values)

    @torch.no_grad()
    def step(self, closure=None):
        self.param_groups[0]['params'][0].fill_(next(self.values))


def test_trainer_restores_the_weights_of_the_best_epoch():
    model = ScalarModel()
    # Valid losses per epoch: 4, 0.25, 49, 1: the second epoch is the best.
    optimizer = ScriptedOptimizer(model.parameters(), [5., 3.5, 10., 4.])
    images = torch.zeros(8, 2, 2, dtype=torch.uint8)
    trainer = Trainer(model, optimizer, verbose=0)
    assert trainer.train(images, torch.arange(8), torch.arange(8), n_epochs=4, batch_size=8)
    history = trainer.history
    assert [h['epoch'] for h in history] == [1, 2, 3, 4]
    assert [h['valid_loss'] for h in history] == [4., .25, 49., 1.]
    assert [h['valid_recon'] for h in history] == [4., .25, 49., 1.]
    assert model.w.item() == 3.5


def test_patience_stops_after_that_many_epochs_without_a_better_valid_loss():
    # Valid losses per epoch: 4, 0.25, 1, 0.25 (a tie is no better), 49, 0: with patience 3
    # training stops after epoch 5, three epochs after the best, and never reaches the 0.
    model = ScalarModel()
    optimizer = ScriptedOptimizer(model.parameters(), [5., 3.5, 4., 2.5, 10., 3.])
    images = torch.zeros(8, 2, 2, dtype=torch.uint8)
    trainer = Trainer(model, optimizer, verbose=0, patience=3)
    assert trainer.train(images, torch.arange(8), torch.arange(8), n_epochs=6, batch_size=8)
    assert [h['valid_loss'] for h in trainer.history] == [4., .25, 1., .25, 49.]
    assert model.w.item() == 3.5
    # The stop is read from the history: the same trainer asked for more epochs trains no more.
    assert trainer.train(images, torch.arange(8), torch.arange(8), n_epochs=10, batch_size=8)
    assert len(trainer.history) == 5


def test_run_epoch_averages_per_image_over_uneven_batches():
    class MeanPixel(nn.Module):
        def loss(self, x):
            loss = x.mean()
            return loss, {'recon': loss}

    # 5 images, batches of 2, 2 and 1: a per-batch mean would weigh the last image double.
    images = torch.tensor([0, 0, 0, 0, 255], dtype=torch.uint8).reshape(5, 1, 1)
    losses = run_epoch(MeanPixel(), images, batch_size=2)
    assert abs(losses['loss'] - .2) < 1e-6
    assert run_epoch(MeanPixel(), images, batch_size=2, indices=torch.tensor([4, 0]))['loss'] == .5


def test_validation_runs_in_large_batches_whatever_the_training_batch_size():
    class BatchSizes(ScalarModel):
        def __init__(self):
            super().__init__()
            self.seen = {True: set(), False: set()}  # training -> the batch sizes it saw

        def loss(self, x):
            self.seen[self.training].add(len(x))
            return super().loss(x)

    model = BatchSizes()
    images = torch.zeros(EVAL_BATCH_SIZE + 8, 1, 1, dtype=torch.uint8)
    train_idx, valid_idx = torch.arange(8), torch.arange(8, len(images))
    Trainer(model, torch.optim.SGD(model.parameters(), lr=.1), verbose=0).train(images, train_idx, valid_idx,
                                                                                n_epochs=1, batch_size=4)
    assert model.seen == {True: {4}, False: {EVAL_BATCH_SIZE}}


def test_training_lowers_the_loss_of_a_real_model():
    torch.manual_seed(0)
    model = build_model(make_config(model='vae', hidden_sizes=[32], btl_size=2))
    images = (torch.rand(64, 28, 28) * 255).to(torch.uint8)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), verbose=0)
    assert trainer.train(images, torch.arange(48), torch.arange(48, 64), n_epochs=5, batch_size=16)
    history = trainer.history
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert set(history[0]) == {'epoch', 'lr', 'seconds', 'train_loss', 'train_recon', 'train_kl',
                               'valid_loss', 'valid_recon', 'valid_kl'}


def valid_losses_of_a_small_ae(n_epochs, batch_size, seed=0, **trainer_flags):
    """Trains SMALL_AE from seed on the same batches; trainer_flags switch the Trainer's amp or
    compile."""
    images = torch.from_numpy(make_images(256, seed=0)[0])
    torch.manual_seed(seed)
    model = build_model(SMALL_AE)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=3e-3), verbose=0, **trainer_flags)
    assert trainer.train(images, torch.arange(192), torch.arange(192, 256), n_epochs=n_epochs, batch_size=batch_size)
    return [h['valid_loss'] for h in trainer.history]


def test_amp_trains_like_fp32_and_reports_fp32_losses():
    """bf16 autocast changes the arithmetic, not the training: every update must reach the
    next forward pass (autocast keeps bf16 copies of the weights while it is on)."""
    fp32, bf16 = (valid_losses_of_a_small_ae(6, 32, amp=amp) for amp in (False, True))
    assert bf16[-1] < bf16[0] / 2
    assert all(abs(a - b) < .15 * a for a, b in zip(fp32, bf16)), (fp32, bf16)


@pytest.mark.slow
def test_compiled_loss_computes_the_eager_loss_and_gradients():
    """torch.compile changes the order of the floating-point operations, nothing else: on the
    same weights and batch the loss and every gradient agree to within the rounding of fp32
    sums of that many terms."""
    torch.manual_seed(0)
    model = build_model(SMALL_AE)
    x = torch.from_numpy(make_images(64, seed=0)[0]).view(64, -1).float() / 255

    def loss_and_gradients(loss_fn):
        model.zero_grad()
        loss = loss_fn(x)[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = loss_and_gradients(model.loss)
    torch.compiler.reset()
    compiled_loss, compiled_grads = loss_and_gradients(compiled(model.loss))
    # A sum of n fp32 terms, reordered, may differ by about n * 2^-24 of its magnitude: here
    # n = 784 pixels x 64 images for the loss, at most the batch times the widest layer for a gradient.
    assert compiled_loss == pytest.approx(eager_loss, rel=784 * 64 * 2 ** -24)
    for eager, compiled_grad in zip(eager_grads, compiled_grads):
        tolerance = 64 * 784 * 2 ** -24 * eager.abs().max().item()
        assert (compiled_grad - eager).abs().max().item() <= tolerance


@pytest.mark.slow
def test_compiled_training_stays_within_the_spread_of_eager_seeds():
    """Over epochs the rounding differences grow as training amplifies them; the compiled run
    must stay as close to the eager run of its seed as eager runs of other seeds are to it."""
    eager = [valid_losses_of_a_small_ae(3, 64, seed=seed) for seed in (0, 1, 2)]
    compiled_run = valid_losses_of_a_small_ae(3, 64, seed=0, compile=True)
    assert compiled_run[-1] < compiled_run[0]
    for epoch, loss in enumerate(compiled_run):
        seed_spread = max(abs(other[epoch] - eager[0][epoch]) for other in eager[1:])
        assert abs(loss - eager[0][epoch]) <= seed_spread, (compiled_run, eager)


@pytest.mark.slow
def test_the_compiled_loss_keeps_a_graph_for_each_batch_size():
    """A smaller batch (the last of an epoch) gets its own graph and leaves the full batches
    on theirs, with sizes known when compiled, rather than moving every batch to one graph
    for any size."""
    from torch._dynamo.utils import counters
    torch.compiler.reset()
    loss_fn = compiled(build_model(SMALL_AE).loss)
    graphs_before = counters['stats']['unique_graphs']
    with torch.no_grad():  # the same choice of graphs as with gradients, compiled faster
        for batch_size in (16, 8, 12):
            loss_fn(torch.rand(batch_size, 784))
    assert counters['stats']['unique_graphs'] - graphs_before == 3


def test_the_weight_average_follows_the_weights_by_its_warming_decay():
    model = ScalarModel()
    average = WeightAverage(model, decay=.9)
    for n, w in enumerate([5., 3., 1.], start=1):
        expected = average.model.w.item()
        model.w.data.fill_(w)
        average.update()
        decay = min(.9, (1 + n) / (10 + n))
        assert average.model.w.item() == pytest.approx(decay * expected + (1 - decay) * w)
    assert model.w.item() == 1.  # the trained weights are left as they are


def test_with_ema_validation_the_best_epoch_and_the_checkpoint_take_the_average():
    # The scripted weights give valid losses 4, 0.25, 49, 1; the average's are others, and the
    # history, the best state and the restored model follow the average's.
    model = ScalarModel()
    optimizer = ScriptedOptimizer(model.parameters(), [5., 3.5, 10., 4.])
    images = torch.zeros(8, 2, 2, dtype=torch.uint8)
    trainer = Trainer(model, optimizer, verbose=0, ema=.5)
    assert trainer.train(images, torch.arange(8), torch.arange(8), n_epochs=4, batch_size=8)
    averages, w = [], 0.  # ScalarModel starts at w = 0
    for n, value in enumerate([5., 3.5, 10., 4.], start=1):
        decay = min(.5, (1 + n) / (10 + n))
        w = decay * w + (1 - decay) * value
        averages.append(w)
    assert [h['valid_loss'] for h in trainer.history] == pytest.approx([(a - 3) ** 2 for a in averages])
    best = min(averages, key=lambda a: (a - 3) ** 2)
    assert model.w.item() == pytest.approx(best)
    assert trainer.state_dict()['model']['w'].item() == pytest.approx(best)
