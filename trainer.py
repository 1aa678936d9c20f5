"""One hand-written training loop for every model in model.py."""
import copy

import torch
from tqdm import tqdm

from data_loader import to_input


def run_epoch(model, images, batch_size, optimizer=None, progress=None):
    """One pass over images (uint8, on the model's device): trains when an optimizer is
    given, else evaluates. Returns the mean loss and parts per image as floats."""
    training = optimizer is not None
    model.train(training)
    n = len(images)
    # Training draws a fresh permutation each epoch; evaluation keeps the order.
    order = torch.randperm(n, device=images.device) if training else torch.arange(n, device=images.device)
    totals, seen = {}, 0
    with torch.set_grad_enabled(training):
        for idx in order.split(batch_size):
            if training and len(idx) < 2:
                continue  # BatchNorm cannot train on one image; it is seen again next epoch
            x = to_input(images[idx])
            # |x| = (batch_size, 784)
            loss, parts = model.loss(x)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            # Sums stay on the device: no synchronisation per step.
            for name, value in {'loss': loss, **parts}.items():
                totals[name] = totals.get(name, 0.) + value.detach() * len(idx)
            seen += len(idx)
            if progress is not None:
                progress.update(1)
    return {name: (total / seen).item() for name, total in totals.items()}


def format_losses(losses):
    return ' '.join(f'{name}={value:.4f}' for name, value in losses.items())


class Trainer:
    """Trains on shuffled mini-batches, validates after each epoch, and keeps the weights of
    the epoch with the lowest valid loss, which it restores at the end."""

    def __init__(self, model, optimizer, scheduler=None, verbose=1):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.verbose = verbose
        self.history = []
        self.best_loss = float('inf')
        self.best_state = None
        self.interrupted = False

    def train(self, train_images, valid_images, n_epochs, batch_size):
        """Returns the history: one dict per epoch with train_* and valid_* losses.
        Ctrl-C ends training early, still with the best weights restored."""
        epochs = tqdm(range(len(self.history) + 1, n_epochs + 1), desc='epochs', disable=self.verbose < 1,
                      dynamic_ncols=True)
        try:
            for epoch in epochs:
                self._train_epoch(epoch, train_images, valid_images, batch_size, epochs)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            epochs.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

    def _train_epoch(self, epoch, train_images, valid_images, batch_size, epochs):
        n_steps = (len(train_images) + batch_size - 1) // batch_size
        with tqdm(total=n_steps, desc=f'epoch {epoch}', leave=False, disable=self.verbose < 2,
                  dynamic_ncols=True) as steps:
            train = run_epoch(self.model, train_images, batch_size, self.optimizer, progress=steps)
        valid = run_epoch(self.model, valid_images, batch_size)
        lr = self.optimizer.param_groups[0]['lr']
        if self.scheduler is not None:
            self.scheduler.step()
        self.history.append({'epoch': epoch, 'lr': lr,
                             **{f'train_{k}': v for k, v in train.items()},
                             **{f'valid_{k}': v for k, v in valid.items()}})
        is_best = valid['loss'] < self.best_loss
        if is_best:
            self.best_loss = valid['loss']
            self.best_state = copy.deepcopy(self.model.state_dict())
        if self.verbose >= 1:
            epochs.write(f'epoch {epoch}: train {format_losses(train)} | valid {format_losses(valid)}'
                         f'{" (best)" if is_best else ""}')
