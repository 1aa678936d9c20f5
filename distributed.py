"""One model trained by several processes that torchrun starts (the ranks), on the GPUs of one machine
or several, or on CPUs.

Every rank holds the same weights. The global batch of --batch_size images, drawn from one seeded
permutation, is shared out among the ranks; each computes the gradient of its share, weighed by its
share of the batch, and one all-reduce per step sums them (with two flags: a rank whose loss is not
finite, a rank asked to stop), so that N ranks take the steps of one process up to the order of
summation. The valid loss is summed over every rank's shard of the valid set. A plain
`python train.py` is one rank, Ranks(), and calls none of this.
"""
import datetime
import os
import re

import torch
import torch.distributed as dist

from utils import CliError, first_line, get_device

# How long a rank waits for the others in one collective before it gives up. A rank that dies closes
# its connections and the others fail at once; this bounds a rank that hangs.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
# Random streams of the ranks after the first (input noise, a VAE's z, training binarization): seeded
# from --seed, the rank and the epochs done, so that a run and its resumption draw the same numbers.
RANK_STREAM = 1_000_003


class Ranks:
    """This process among the size processes that train one model (rank 0 alone writes files)."""

    def __init__(self, rank=0, size=1, local_rank=0, local_size=1):
        self.rank, self.size, self.local_rank, self.local_size = rank, size, local_rank, local_size

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def is_distributed(self):
        return self.size > 1

    def share(self, indices):
        """This rank's part of a batch (or of the valid set): consecutive parts, their sizes differing
        by at most one."""
        return indices.tensor_split(self.size)[self.rank] if self.is_distributed else indices

    def sum(self, tensor):
        """tensor summed over the ranks, in place."""
        if self.is_distributed:
            dist.all_reduce(tensor)
        return tensor

    def permutation(self, n, device):
        """A random permutation of range(n), drawn by rank 0 from its random stream (the stream of a
        process training alone) and the same on every rank."""
        order = torch.randperm(n, device=device)
        if self.is_distributed:
            dist.broadcast(order, 0)
        return order

    def hold_gradients(self, model):
        """Makes the gradients of model's parameters views of one flat buffer, followed by two flags,
        which one all-reduce per step sums with no copy. Alone, nothing changes."""
        if not self.is_distributed:
            return
        parameters = [p for p in model.parameters() if p.requires_grad]
        self.gradients = torch.zeros(sum(p.numel() for p in parameters) + 2, device=parameters[0].device)
        offset = 0
        for p in parameters:
            p.grad = self.gradients[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero_gradients(self):
        """Zeroes the gradients before a step (they must stay views of the buffer: never set to None)."""
        self.gradients.zero_()

    def reduce_gradients(self, finite, stop):
        """Sums the gradients of every rank (each already weighed by its share of the batch) in one
        all-reduce that also carries two flags: whether every rank's loss was finite, whether any rank
        was asked to stop. Returns (finite, stop) as agreed by all."""
        self.gradients[-2] = 0. if finite else 1.
        self.gradients[-1] = 1. if stop else 0.
        dist.all_reduce(self.gradients)
        not_finite, stopped = self.gradients[-2:].tolist()
        return not_finite == 0, stopped > 0

    def average_buffers(self, model):
        """Averages the float buffers (BatchNorm's running statistics, which each rank gathers from its
        share of the batches) over the ranks, so that every rank validates and saves the same model."""
        if not self.is_distributed:
            return
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if buffers:
            flat = torch.cat([b.flatten() for b in buffers])
            dist.all_reduce(flat)
            flat /= self.size
            torch._foreach_copy_(buffers, list(flat.split([b.numel() for b in buffers])))

    def seed_stream(self, seed, epochs_done):
        """Seeds the random stream of a rank after the first; rank 0 keeps its own, that of a process
        training alone, which the checkpoint saves."""
        if self.rank > 0:
            torch.manual_seed(hash((seed, RANK_STREAM, self.rank, epochs_done)) % 2 ** 63)

    def barrier(self):
        if self.is_distributed:
            dist.barrier()

    def end(self):
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def under_torchrun():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def start(gpu_id):
    """(Ranks, device) of this process: under torchrun with several processes, its rank in a process
    group (nccl on GPUs: rank r of a machine takes GPU gpu_id + r; gloo on CPUs, --gpu_id -1); else
    one rank on --gpu_id's device."""
    if not under_torchrun():
        return Ranks(), get_device(gpu_id)
    env = {name: int(os.environ[name]) for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE')}
    ranks = Ranks(env['RANK'], env['WORLD_SIZE'], env['LOCAL_RANK'], env['LOCAL_WORLD_SIZE'])
    if gpu_id < 0:
        device, backend = torch.device('cpu'), 'gloo'
    else:
        last = gpu_id + ranks.local_size - 1
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if last >= n_gpus:
            raise CliError(f'--gpu_id {gpu_id}: under torchrun the {ranks.local_size} ranks of a machine take GPUs '
                           f'{gpu_id}-{last}, and this machine has {n_gpus}; give --nproc_per_node {n_gpus - gpu_id} '
                           f'or fewer, or --gpu_id -1 for CPUs')
        device, backend = torch.device(f'cuda:{gpu_id + ranks.local_rank}'), 'nccl'
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                **({'device_id': device} if backend == 'nccl' else {}))
    except (RuntimeError, TimeoutError) as e:
        raise CliError(f'rank {ranks.rank}: the ranks did not all meet ({collective_error(e)}); check that every '
                       f'machine was given the same --nnodes and rendezvous address, and that it is reachable')
    return ranks, device


def collective_error(error):
    """The gist of a failed collective's message: gloo's and NCCL's without their source location and
    advice, e.g. 'Read error [127.0.0.1]:2708: Connection reset by peer'."""
    return re.sub(r'^\[[^\]]*\]\s*', '', first_line(error)).split('. ')[0]
