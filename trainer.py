"""One hand-written training loop for every model in model.py."""
import copy
import math
import time

import torch

from data_loader import binary_input, to_input
from distributed import Ranks
from utils import EVAL_BATCH_SIZE, EVAL_SEED, progress_bar, seeded


AMP_DTYPE = torch.bfloat16  # train.py --amp: no loss scaling needed, unlike float16


def forward_precision(device_type, amp):
    """The context for a forward pass: autocast to AMP_DTYPE when amp is on, else fp32.
    It must cover the forward pass only: autocast keeps its copies of the weights for as long
    as it is on, so an update made inside it would not reach the next forward."""
    return torch.autocast(device_type, dtype=AMP_DTYPE, enabled=amp)


def compiled(loss_fn):
    """loss_fn (a model's loss) compiled by torch.compile, forward and backward. The step's
    many small kernels take less time than their launches: mode='reduce-overhead' replays them
    as CUDA graphs, and on the CPU it compiles without them. Each batch shape gets a graph of
    its own (dynamic=False): otherwise the first smaller batch, the last of an epoch, turns
    torch to one graph for every batch size, and the full batches after it run slower."""
    return torch.compile(loss_fn, mode='reduce-overhead', dynamic=False)


def build_optimizer(model, t):
    """The optimizer and learning-rate scheduler (or None) that a TrainingConfig t asks for."""
    optimizer_class = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}[t.optimizer]
    # fused: one kernel for the whole update instead of several per tensor
    optimizer = optimizer_class(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.n_epochs)
                 if t.scheduler == 'cosine' else None)
    return optimizer, scheduler


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging; IAF and Efficient-VDVAE
    evaluate and save such averages): a copy of the model whose parameters and float buffers move a
    share 1 - decay toward the trained model's after every update. The decay starts low and rises
    toward its value, min(decay, (1 + n) / (10 + n)) after n updates, so that the average does not
    keep the random initial weights for thousands of steps."""

    def __init__(self, model, decay):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.updates = decay, 0
        self.targets, self.sources = averaged_tensors(self.model), averaged_tensors(model)

    @torch.no_grad()
    def update(self):
        """One step of the average toward the weights, after an update of the trained model."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.targets, self.sources, 1 - decay)

    def state_dict(self):
        return {'model': self.model.state_dict(), 'updates': self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state['model'])
        self.updates = state['updates']


def averaged_tensors(model):
    """The tensors of a model that an average follows: its parameters and float buffers (BatchNorm's
    running statistics), in the order of its state dict, whose tensors share their storage."""
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def out_of_patience(history, patience):
    """Whether the last patience epochs of a history brought no better valid loss. It is read from the
    history alone, so that a resumed run stops where an uninterrupted one would."""
    if not patience or not history:
        return False
    losses = [h['valid_loss'] for h in history]
    return len(losses) - 1 - losses.index(min(losses)) >= patience


class NonFiniteLoss(Exception):
    """The loss became nan or inf; training cannot go on from these weights."""


def run_epoch(model, images, batch_size, indices=None, optimizer=None, progress=None, should_stop=None, amp=False,
              loss_fn=None, binarize=False, average=None, ranks=Ranks(), on_step=None):
    """One pass over images[indices] (uint8, on the model's device; all images when indices is
    None): trains when an optimizer is given, else evaluates. The loss is model.loss, or
    loss_fn (model.loss compiled); with amp its forward pass runs under bf16 autocast. With
    binarize, each batch is a fresh Bernoulli draw of its pixel intensities. A WeightAverage given
    as average follows the weights after every update; on_step(step, loss) sees the loss of each
    training step (a tensor, left on the device). On several ranks (distributed.py) each takes its
    share of every batch. Returns the mean loss and parts per image as floats, or None when
    should_stop() turned true before the pass ended."""
    training = optimizer is not None
    loss_fn = loss_fn or model.loss
    model.train(training)
    if indices is None:
        indices = torch.arange(len(images), device=images.device)
    if training:
        # A fresh permutation each epoch, the same on every rank, each rank taking its share of every
        # batch. BatchNorm cannot train on one image: a last batch of fewer than two images a rank is
        # seen again next epoch.
        order = indices[ranks.permutation(len(indices), indices.device)]
        batches = [(ranks.share(idx), len(idx)) for idx in order.split(batch_size) if len(idx) >= 2 * ranks.size]
    else:  # evaluation keeps the order, each rank taking its shard of the images
        batches = [(idx, len(idx)) for idx in ranks.share(indices).split(batch_size)]
    totals, seen = {}, 0
    with torch.set_grad_enabled(training):
        for step, (share, batch_length) in enumerate(batches, start=1):
            batch = images.index_select(0, share)  # much faster than images[share] on a CPU
            x = binary_input(batch) if binarize else to_input(batch)
            # |x| = (batch_size / ranks.size, C * H * W)
            with forward_precision(images.device.type, amp):
                loss, parts = loss_fn(x)
            if training:
                stop_asked = should_stop is not None and should_stop()
                try:
                    went_on = train_step(optimizer, loss, len(share) / batch_length, ranks, stop_asked)
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f'{e} at step {step}') from None
                if not went_on:
                    return None
                if average is not None:
                    average.update()
                if on_step is not None:
                    on_step(step, loss.detach())
            # Sums stay on the device: no synchronisation for them.
            for name, value in {'loss': loss, **parts}.items():
                totals[name] = totals.get(name, 0.) + value.detach() * len(share)
            seen += len(share)
            if progress is not None:
                progress.update(1)
    return mean_over_ranks(totals, seen, ranks)


def train_step(optimizer, loss, weight, ranks, stop_asked):
    """The update of one batch; the weights never take a step from a non-finite loss. Alone, the
    loss is checked before the backward pass; on several ranks each rank's gradient, weighed by its
    share of the batch, is summed with the others', and the flags of a non-finite loss and of a stop
    request travel with it. Returns whether training goes on (no rank asked to stop)."""
    own_finite = bool(torch.isfinite(loss))
    if ranks.is_distributed:
        ranks.zero_gradients()
        (loss * weight).backward()
        finite, stop = ranks.reduce_gradients(own_finite, stop_asked)
    else:
        optimizer.zero_grad(set_to_none=True)
        finite, stop = own_finite, stop_asked
        if finite:
            loss.backward()
    if not finite:
        raise NonFiniteLoss(f'loss is {loss.item()}' if not own_finite else 'loss is not finite on another rank')
    optimizer.step()
    return not stop


def mean_over_ranks(totals, seen, ranks):
    """The mean loss and parts per image of a pass from each rank's sums over the seen images of its
    share (one all-reduce on several ranks); a mean that is not finite ends training."""
    device = next(iter(totals.values())).device if totals else 'cpu'
    sums = ranks.sum(torch.stack([*totals.values(), torch.tensor(float(seen), device=device)]))
    means = dict(zip(totals, (sums[:-1] / sums[-1]).tolist()))
    if not math.isfinite(means.get('loss', 0.)):
        raise NonFiniteLoss(f'the mean loss is {means["loss"]}')
    return means


def validate(model, images, indices=None, amp=False, loss_fn=None, ranks=Ranks()):
    """The mean losses of an evaluation pass, its random draws from EVAL_SEED: the same draws
    every epoch, and the training's random numbers left as they were, so that a resumed run takes
    the same steps as an uninterrupted one."""
    with seeded(EVAL_SEED, images.device):
        return run_epoch(model, images, EVAL_BATCH_SIZE, indices, amp=amp, loss_fn=loss_fn, ranks=ranks)


def format_losses(losses):
    """name=value pairs; a part equal to the loss (the reconstruction of an AutoEncoder without a
    penalty) is not printed twice."""
    return ' '.join(f'{name}={value:.4f}' for name, value in losses.items()
                    if name == 'loss' or value != losses.get('loss'))


def rng_states():
    return {'cpu': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states):
    torch.set_rng_state(states['cpu'])
    if states['cuda'] and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])


class Trainer:
    """Trains on shuffled mini-batches, validates after each epoch, and keeps the weights of
    the epoch with the lowest valid loss, which it restores at the end.

    With amp, the forward passes (training and validation) run under bf16 autocast; the
    weights, the gradients, the optimizer state and the losses stay fp32. With compile, the
    model's loss runs through torch.compile (see compiled()). With ema, a WeightAverage of that
    decay follows the weights: validation, the best epoch and the checkpoint take the average.

    On several ranks (distributed.py) each trains on its share of every batch and validates its
    shard of the valid images; the losses, the history and the weights are the same on every rank.

    After every epoch it calls on_epoch_end(trainer), where train.py saves a checkpoint and writes
    the log, and after every step on_step(step, loss). Setting stop_requested (from a signal
    handler) ends training after the current step;
    the unfinished epoch is dropped, so what was saved last is a clean point to resume from.
    """

    def __init__(self, model, optimizer, scheduler=None, verbose=1, amp=False, compile=False, binarize=False,
                 patience=0, ema=0., ranks=Ranks()):
        self.model, self.ranks = model, ranks
        self.average = WeightAverage(model, ema) if ema else None
        ranks.hold_gradients(model)
        self.amp, self.binarize, self.patience = amp, binarize, patience
        self.loss_fn = compiled(model.loss) if compile else model.loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.verbose = verbose
        self.history = []
        self.best_loss = float('inf')
        self.best_state = None
        self.stop_requested = False

    def train(self, images, train_indices, valid_indices, n_epochs, batch_size, on_epoch_end=None, valid_images=None,
              on_step=None):
        """Trains on images[train_indices] and validates on valid_images[valid_indices]
        (valid_images defaults to images), for the epochs after those already in the history, up
        to n_epochs, or until patience epochs in a row brought no better valid loss. Returns True
        when training ended so, False when stop_requested ended it early. With binarize, the
        training images are binarized afresh in every batch; the valid images are taken as they
        are given (train.py binarizes them once)."""
        valid_images = images if valid_images is None else valid_images
        # The bar is cleared when training ends: the per-epoch lines are the record.
        epochs = progress_bar(range(len(self.history) + 1, n_epochs + 1), shown=self.verbose >= 1, desc='epochs',
                              leave=False, dynamic_ncols=True)
        with epochs:
            for epoch in epochs:
                if self.out_of_patience():
                    break
                try:
                    finished = self._train_epoch(epoch, images, train_indices, valid_images, valid_indices, batch_size,
                                                 epochs, on_step)
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f'{e} of epoch {epoch}') from None
                if not finished:
                    return False
                if on_epoch_end is not None:
                    on_epoch_end(self)
        self.model.load_state_dict(self.best_state)
        return True

    def out_of_patience(self):
        return out_of_patience(self.history, self.patience)

    @property
    def evaluated(self):
        """The model that validation measures and the checkpoint keeps: the average, if any."""
        return self.average.model if self.average else self.model

    def _train_epoch(self, epoch, images, train_indices, valid_images, valid_indices, batch_size, epochs, on_step):
        start = time.perf_counter()
        self.model.set_epoch(epoch)
        self.evaluated.set_epoch(epoch)
        n_steps = (len(train_indices) + batch_size - 1) // batch_size
        with progress_bar(total=n_steps, shown=self.verbose >= 2, desc=f'epoch {epoch}', leave=False,
                          dynamic_ncols=True) as steps:
            train = run_epoch(self.model, images, batch_size, train_indices, self.optimizer, progress=steps,
                              should_stop=lambda: self.stop_requested, amp=self.amp, loss_fn=self.loss_fn,
                              binarize=self.binarize, average=self.average, ranks=self.ranks, on_step=on_step)
        if train is None:
            return False
        # Each rank's BatchNorm statistics come from its shares of the batches: the ranks average them.
        for model in {id(m): m for m in (self.model, self.evaluated)}.values():
            self.ranks.average_buffers(model)
        # The compiled loss belongs to the trained model; the average is validated eagerly.
        valid = validate(self.evaluated, valid_images, valid_indices, self.amp,
                         None if self.average else self.loss_fn, self.ranks)
        lr = self.optimizer.param_groups[0]['lr']
        if self.scheduler is not None:
            self.scheduler.step()
        self.history.append({'epoch': epoch, 'lr': lr,
                             **{f'train_{k}': v for k, v in train.items()},
                             **{f'valid_{k}': v for k, v in valid.items()},
                             'seconds': time.perf_counter() - start})
        is_best = valid['loss'] < self.best_loss
        if is_best:
            self.best_loss = valid['loss']
            self.best_state = copy.deepcopy(self.evaluated.state_dict())
        if self.verbose >= 1:
            epochs.write(f'epoch {epoch}: train {format_losses(train)} | valid {format_losses(valid)}'
                         f'{" (best)" if is_best else ""}')
        return True

    def state_dict(self):
        """Everything needed to save the best model and to resume exactly after this epoch."""
        return {
            'model': self.best_state,
            'opt': self.optimizer.state_dict(),
            'history': self.history,
            'last': {
                'model': self.model.state_dict(),
                'scheduler': self.scheduler.state_dict() if self.scheduler is not None else None,
                'rng': rng_states(),
                'average': self.average.state_dict() if self.average else None,
            },
        }

    def load_state_dict(self, state):
        """Restores what state_dict() saved: the next train() call goes on where it stopped."""
        self.model.load_state_dict(state['last']['model'])
        self.optimizer.load_state_dict(state['opt'])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state['last']['scheduler'])
        self.history = list(state['history'])
        self.best_state = state['model']
        self.best_loss = min(h['valid_loss'] for h in self.history)
        set_rng_states(state['last']['rng'])
        if self.average:
            self.average.load_state_dict(state['last']['average'])
