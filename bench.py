"""Measures how fast this repository trains, against the machine's own matmul throughput.

    python bench.py            # prints a table and writes bench.json
    python bench.py --amp      # the same under bf16 autocast (train.py --amp)
    python bench.py --compile  # the same with the loss compiled (train.py --compile)

In one run, on the current machine: the fp32 matmul throughput on the layer shapes being
trained; the Trainer's epoch time for the default AutoEncoder and for the 784-400-20 VAE, and
the share of that throughput it reaches; the same VAE fed the common way (a DataLoader over a
Dataset that converts each image with ToTensor); peak resident memory of train.py on all
60,000 images and on a hundredth of them; inference throughput through encode + decode; and how
fast a folder of 10,000 PNG images is read, the first time (decoding) and from its cache; the training
steps of the recipes that docs/results.md rests on (RECIPE_STEPS), each against the matmul throughput
of its own products; and how fast predict.py estimates -log p(x) with 5,000 importance samples per image.
"""
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

from config import DEFAULTS, ONECLASS_RECIPE, RECIPES, Recipe, make_config
import analysis
import data_loader
from data_loader import (DataError, binarize_once, load_dataset, split_train_valid, to_input, write_idx,
                         write_image_folder)
from flags import LOG_DEFAULTS, as_flags
from model import build_model
from runlog import CSV_NAME, RunLog
from trainer import AMP_DTYPE, Trainer, WeightAverage, build_optimizer, forward_precision, run_epoch
from utils import (EVAL_BATCH_SIZE, ArgumentParser, add_device_flags, child_processes, get_device,
                   int_at_least, print_rows, run_cli, run_sibling, set_seed, set_threads)

# The default AutoEncoder with a 2-d code, and the classic VAE of pytorch/examples:
# 784-400-20, Linear + ReLU, no normalisation.
AE = make_config(btl_size=2, likelihood='mse', n_epochs=1)
VAE = make_config(model='vae', hidden_sizes=[400], btl_size=20, use_dropout=True, dropout_p=0., n_epochs=1)
# The VAE of the binarized-data likelihood tables (Tomczak and Welling 2018; Norouzi et al. 2020):
# 784-300-300-40, gated hidden layers.
NLL_VAE = make_config(model='vae', gated=True, hidden_sizes=[300, 300], btl_size=40, binarize=True)


# The training steps that the results of docs/results.md rest on: the binarized-data likelihood
# recipes (gated 784-300-300-40 VAE; the VampPrior at batch 100 as published and at the fast recipe's
# 250; IWAE with 5 samples) and the one-class protocol's convolutional AE, batch 256.
RECIPE_STEPS = {'binarized_vae_fast': RECIPES['binarized_vae_fast'],
                'binarized_vamp (batch 100)': RECIPES['binarized_vamp'],
                'binarized_vamp_fast (batch 250)': RECIPES['binarized_vamp_fast'],
                'binarized_iwae_fast (k = 5)': RECIPES['binarized_iwae_fast'],
                'oneclass (conv)': Recipe({**ONECLASS_RECIPE.changes, 'dataset': 'fashion_mnist'})}


def define_argparser():
    p = ArgumentParser(prog='bench.py', description=__doc__.strip().splitlines()[0])
    add_device_flags(p)
    p.add_argument('--n_epochs', type=int_at_least(2), default=4,
                   help='epochs per timing; the first is warm-up and not counted (default: %(default)s)')
    p.add_argument('--batch_size', type=int_at_least(2), default=256, help='(default: %(default)s)')
    p.add_argument('--out', default='bench.json', help='where to write the results (default: %(default)s)')
    p.add_argument('--amp', action='store_true',
                   help='bf16 autocast, as train.py --amp: the matmul throughput in bf16, both training loops under '
                        'autocast')
    p.add_argument('--compile', action='store_true',
                   help='the loss compiled, as train.py --compile: the Trainer times the compiled loss, its first '
                        '(compiling) epoch left out as always')
    p.add_argument('--data_dir', default=DEFAULTS['data_dir'],
                   help='where to look for Fashion-MNIST (default: %(default)s)')
    p.add_argument('--shared_data_mb', type=int_at_least(1), default=500,
                   help='the size of the folder cache on which the memory of 1 and 2 ranks is measured '
                        '(default: %(default)s)')
    return p


def load_images(data_dir):
    """Fashion-MNIST's 60,000 training images (N, 1, 28, 28) when installed, else random ones of that
    shape."""
    try:
        images, _ = load_dataset('fashion_mnist', data_dir, train=True, download=False)
        return images, 'Fashion-MNIST'
    except DataError:
        return torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8), 'random images (Fashion-MNIST not found)'


def linear_shapes(model):
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def forward_flops(shapes):
    """Multiply-adds of the Linear layers for one image, counted as 2 FLOPs each."""
    return sum(2 * i * o for i, o in shapes)


def training_flops(shapes):
    """FLOPs per image of the products that a training step runs: forward, input gradient and
    weight gradient of every Linear, less the first layer's input gradient, which autograd
    skips because the images need none. The share of matmul in the table counts
    3 x forward_flops instead, as if that product ran too."""
    i, o = shapes[0]
    return 3 * forward_flops(shapes) - 2 * i * o


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_throughput(shapes, device, dtype=torch.float32, rounds=3, min_seconds=.3, forward_only=False):
    """GFLOP/s of the matrix products (m, k, n), (m, k) by (k, n), and unless forward_only of the two
    that their backward pass runs too (input gradient (m, n) by (n, k), weight gradient (k, m) by
    (m, n)), back to back: the best of several rounds, the peak that a training step or an evaluation
    is measured against. A Linear layer of a batch of m images is (m, in_features, out_features)."""
    products = []
    for m, k, n in shapes:
        x, w, g = (torch.randn(*s, device=device, dtype=dtype) for s in ((m, k), (k, n), (m, n)))
        products += [(x, w)] if forward_only else [(x, w), (g, w.t()), (x.t(), g)]
    flops = sum(2 * m * k * n for m, k, n in shapes) * (1 if forward_only else 3)
    return best_gflops(products, flops, device, rounds, min_seconds)


def best_gflops(products, flops, device, rounds, min_seconds):
    """GFLOP/s of running the matrix products (pairs of tensors), which take flops in all, back to
    back: the best of several rounds of at least min_seconds each, after a warm-up."""
    for a, b in products:  # warm-up
        torch.mm(a, b)
    best = 0.
    for _ in range(rounds):
        synchronize(device)
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for a, b in products:
                torch.mm(a, b)
            repeats += 1
        synchronize(device)
        best = max(best, flops * repeats / (time.perf_counter() - start) / 1e9)
    return best


def time_trainer(config, images, batch_size, n_epochs, device, amp, compile):
    """Seconds per epoch (train + validation) of this repository's Trainer, warm-up excluded."""
    # Compiled code is kept per function, here Codec.loss for every model: each model starts
    # afresh, so that the AE's compilations do not count against torch's limit for the VAE's.
    torch.compiler.reset()
    set_seed(1)
    model = build_model(config).to(device)
    optimizer, _ = build_optimizer(model, config.training)  # as train.py makes it
    train_idx, valid_idx = split(config, images)
    stamps = [time.perf_counter()]
    trainer = Trainer(model, optimizer, verbose=0, amp=amp, compile=compile)
    trainer.train(images.to(device), train_idx.to(device), valid_idx.to(device), n_epochs, batch_size,
                  on_epoch_end=lambda t: (synchronize(device), stamps.append(time.perf_counter())))
    times = np.diff(stamps)[1:]
    return float(statistics.median(times)), model, len(train_idx), len(valid_idx)


def split(config, images):
    """The train and valid indices of images, split as train.py splits a run's training set."""
    return split_train_valid(len(images), config.training.train_ratio, config.training.seed)


class ToTensorDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST dataset does per item: a PIL image, then ToTensor."""

    def __init__(self, images):
        from torchvision import transforms
        self.images = images[:, 0].numpy()
        self.transform = transforms.ToTensor()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i], mode='L')), 0


def time_dataloader(config, images, batch_size, n_epochs, device, amp):
    """Seconds per epoch of the same model trained the common way, as the PyTorch VAE
    example does: a shuffled DataLoader that converts each image, then .to(device)."""
    set_seed(1)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # as the example makes it

    def loss(x):
        with forward_precision(device.type, amp):
            return model.loss(x.view(len(x), -1).to(device))[0]

    train_idx, valid_idx = split(config, images)
    train_loader = torch.utils.data.DataLoader(ToTensorDataset(images[train_idx]), batch_size, shuffle=True)
    valid_loader = torch.utils.data.DataLoader(ToTensorDataset(images[valid_idx]), batch_size)
    times = []
    for _ in range(n_epochs):
        start = time.perf_counter()
        model.train()
        for x, _ in train_loader:
            optimizer.zero_grad()
            loss(x).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x, _ in valid_loader:
                loss(x)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(statistics.median(times[1:]))


def inference_throughput(model, images, device, batch_size=EVAL_BATCH_SIZE, min_seconds=1.):
    """Images per second through encode + decode, as predict.py runs them."""
    model.eval()
    x_all = images[:10000].to(device).reshape(-1, 784).float().div(255)
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - start < min_seconds:
            for x in x_all.split(batch_size):
                model.decode(model.encode(x))
            done += len(x_all)
        synchronize(device)
    return done / (time.perf_counter() - start)


# Runs train.py and reports its peak resident memory from /proc (Linux). ru_maxrss of a child
# would not do: it starts from the memory of the process that forked it, this one.
PEAK_RSS_OF_TRAIN_PY = """
import os, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python train.py` does, from any folder
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))
    print('peak_rss_kb', peak.split()[1])
"""


def write_training_idx(folder, images):
    """images (N, 1, 28, 28) as the training IDX files of a data set, unlabelled (every label 0), for
    train.py to read like any data set."""
    write_idx(os.path.join(folder, 'train-images-idx3-ubyte'), images[:, 0].numpy())
    write_idx(os.path.join(folder, 'train-labels-idx1-ubyte'), np.zeros(len(images)))


def peak_training_memory_mb(images, n_images, train_flags):
    """Peak resident memory of `python train.py` (default AutoEncoder, one epoch, CPU, with
    train_flags added) on the first n_images images, written as IDX files for it to read like
    any data set."""
    with tempfile.TemporaryDirectory() as folder:
        write_training_idx(folder, images[:n_images])
        printed = run_sibling('train.py', ['--model_fn', os.path.join(folder, 'm.pth'), '--data_dir', folder,
                                           '--btl_size', '2', '--n_epochs', '1', '--verbose', '0', '--gpu_id', '-1',
                                           *train_flags],
                              f'train.py failed on {n_images} images', python_args=['-c', PEAK_RSS_OF_TRAIN_PY])
        return int(printed.split('peak_rss_kb')[-1]) / 1024


def nll_speed(images, device, n_images=20, n_samples=5000, rounds=5):
    """predict.py's importance-sampled -log p(x) with n_samples per image, timed on n_images
    binarized images with the VAE of the binarized-data literature (NLL_VAE): seconds per image,
    the time it would take for the 10,000 test images, and the share of the fp32 matmul
    throughput on the decoder's layer shapes at the rows decoded per pass, where the work is.
    Each round times the pass and then the peak, so that a share compares the two under the same
    load of a shared machine; the medians over the rounds are reported."""
    model = build_model(NLL_VAE).to(device).eval()
    x = binarize_once(images[:n_images]).to(device)
    analysis.variational_bounds(model, x[:1], n_samples)  # warm-up
    max_rows = analysis.decoded_rows(device)
    rows = min(n_samples * max(1, max_rows // n_samples), max_rows)  # about the codes decoded per pass
    decoder = linear_shapes(model.decoder)
    flops = forward_flops(decoder) * n_samples + forward_flops(linear_shapes(model.encoder))
    timings = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        analysis.variational_bounds(model, x, n_samples)
        synchronize(device)
        seconds = (time.perf_counter() - start) / n_images
        peak = matmul_throughput([(rows, i, o) for i, o in decoder], device, rounds=2, forward_only=True)
        timings.append((seconds, peak, flops / seconds / 1e9 / peak))
    seconds, peak, share = (statistics.median(column) for column in zip(*timings))
    return {'layers': linear_shapes(model), 'n_samples': n_samples, 'seconds_per_image': seconds,
            'test_set_minutes': seconds * 10000 / 60, 'matmul_gflops': peak, 'achieved_gflops': flops / seconds / 1e9,
            'share_of_matmul': share, 'share_of_matmul_range': [min(t[2] for t in timings), max(t[2] for t in timings)]}


def gemm_shapes(model, x):
    """The matrix products (m, k, n) of one forward pass of model.loss(x): a Linear multiplies
    (rows, in) by (in, out); a convolution is the product of its unfolded patches (B * H_out * W_out,
    C_in * 9) by (C_in * 9, C_out), and a transposed one the product (B * H_in * W_in, C_in) by
    (C_in, C_out * 9) before its overlapping sums. Read by forward hooks, so that a VampPrior's pseudo-inputs
    and an IWAE's samples count as the rows they add."""
    shapes = []

    def record(module, inputs, output):
        if isinstance(module, nn.Linear):
            shapes.append((inputs[0].numel() // module.in_features, module.in_features, module.out_features))
        elif isinstance(module, nn.Conv2d):
            kernel = math.prod(module.kernel_size)
            shapes.append((output.numel() // module.out_channels, module.in_channels * kernel, module.out_channels))
        elif isinstance(module, nn.ConvTranspose2d):
            kernel = math.prod(module.kernel_size)
            shapes.append((inputs[0].numel() // module.in_channels, module.in_channels, module.out_channels * kernel))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        model.train()
        with torch.no_grad():
            model.loss(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def recipe_step_speed(recipe, images, device, n_steps=60):
    """A recipe's training step (its model, batch size, binarization and weight average, as train.py
    runs it) timed over n_steps after a warm-up, against the fp32 throughput of the same matrix
    products (gemm_shapes) at the same sizes: milliseconds per step and the share of that throughput."""
    config = recipe.config.replace(image_shape=list(images.shape[1:]))
    set_seed(1)
    model = build_model(config).to(device)
    optimizer, _ = build_optimizer(model, config.training)
    batch_size, ema = config.training.batch_size, config.training.ema
    trainer_images = images.to(device)
    # Full batches drawn with replacement: n_steps timed steps and 10 of warm-up, however few the images.
    indices = torch.randint(len(images), (batch_size * (n_steps + 10),), generator=torch.Generator().manual_seed(1))
    indices = indices.to(device)
    average = WeightAverage(model, ema) if ema else None
    epoch = dict(optimizer=optimizer, binarize=config.data.binarize, average=average)
    run_epoch(model, trainer_images, batch_size, indices[:batch_size * 10], **epoch)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    run_epoch(model, trainer_images, batch_size, indices[batch_size * 10:], **epoch)
    synchronize(device)
    seconds = (time.perf_counter() - start) / n_steps
    shapes = gemm_shapes(model, to_input(trainer_images[:batch_size]))
    flops = sum(6 * m * k * n for m, k, n in shapes)
    peak = matmul_throughput(shapes, device)
    return {'flags': ' '.join(as_flags(recipe.changes)), 'batch_size': batch_size, 'step_ms': seconds * 1000,
            'gemm_shapes': shapes,
            'matmul_gflops': peak, 'achieved_gflops': flops / seconds / 1e9,
            'share_of_matmul': flops / seconds / 1e9 / peak}


def folder_read_speed(images, n_images=10000):
    """Images per second of the first read of a folder of n_images PNG files (decoding them),
    and the seconds of a second read (from the cache), as train.py reads --dataset folder."""
    with tempfile.TemporaryDirectory() as folder:
        root = write_image_folder(os.path.join(folder, 'images'), images[:n_images])
        previous = os.environ.get('XDG_CACHE_HOME')
        os.environ['XDG_CACHE_HOME'] = os.path.join(folder, 'cache')  # a fresh cache, removed afterwards
        try:
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                data_loader.read_folder(root)
                timings.append(time.perf_counter() - start)
        finally:
            if previous is None:
                del os.environ['XDG_CACHE_HOME']
            else:
                os.environ['XDG_CACHE_HOME'] = previous
    n_read = min(n_images, len(images))
    return {'n_images': n_read, 'first_read_images_per_s': n_read / timings[0], 'cached_read_seconds': timings[1]}


def logging_cost(config, images, batch_size, device, n_epochs=4):
    """What the run's log (runlog.py) costs the Trainer: one model trained with the log and one without,
    an epoch of each in turn, so that both see the same state of the machine; the median over the
    epochs after the first of the logged epoch's seconds over the other's, less 1, and the share of
    the logged epochs spent inside the log's own calls (after every step and every epoch)."""
    train_idx, valid_idx = split(config, images)
    device_images, train_idx, valid_idx = images.to(device), train_idx.to(device), valid_idx.to(device)
    with tempfile.TemporaryDirectory() as folder:
        runs = []
        for logged in (False, True):
            set_seed(1)
            model = build_model(config).to(device)
            trainer = Trainer(model, build_optimizer(model, config.training)[0], verbose=0,
                              binarize=config.data.binarize, ema=config.training.ema)
            log = RunLog(folder, config, [], -(-len(train_idx) // batch_size), len(train_idx), images,
                         valid_idx.cpu(), LOG_DEFAULTS['log_every_n_steps'],
                         LOG_DEFAULTS['log_images_every']) if logged else None
            runs.append({'trainer': trainer, 'log': log, 'seconds': [], 'in_log': 0.})
        for epoch in range(1, n_epochs + 1):
            for run in runs:
                log = run['log']

                def timed(call):
                    def timed_call(*args):
                        start = time.perf_counter()
                        call(*args)
                        run['in_log'] += time.perf_counter() - start
                    return timed_call
                start = time.perf_counter()
                run['trainer'].train(device_images, train_idx, valid_idx, epoch, batch_size,
                                     on_epoch_end=log and timed(log.write_epoch), on_step=log and timed(log.step))
                synchronize(device)
                run['seconds'].append(time.perf_counter() - start)
        runs[1]['log'].close()
    plain, logged = runs
    ratios = [b / a for a, b in zip(plain['seconds'][1:], logged['seconds'][1:])]
    return {'epoch_seconds': statistics.median(plain['seconds'][1:]),
            'epoch_seconds_logged': statistics.median(logged['seconds'][1:]),
            'difference': statistics.median(ratios) - 1, 'log_share': logged['in_log'] / sum(logged['seconds'])}


def train_py_command(n_ranks, device, args):
    """How bench.py starts train.py: alone, or under torchrun with n_ranks ranks."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
    gpu = ['--gpu_id', '-1' if device.type == 'cpu' else str(device.index or 0)]
    if n_ranks == 1:
        return [sys.executable, script, *gpu, *args]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n_ranks), script,
            *gpu, *args]


def ranks_speed(images, device, n_ranks, n_epochs=3, train_flags=()):
    """Training images per second of the default AutoEncoder (2-d code) by train.py alone (torch's
    threads: every core) and under torchrun on n_ranks ranks (one thread each on CPUs), read from the
    runs' metrics.csv: the median over the epochs after the first."""
    with tempfile.TemporaryDirectory() as folder:
        write_training_idx(folder, images)
        speeds = {}
        for ranks in (1, n_ranks):
            model_fn = os.path.join(folder, f'ranks{ranks}.pth')
            subprocess.run(train_py_command(ranks, device, ['--model_fn', model_fn, '--data_dir', folder,
                                                            '--btl_size', '2', '--n_epochs', str(n_epochs),
                                                            '--verbose', '0', *train_flags]),
                           check=True, capture_output=True)
            with open(os.path.join(folder, f'ranks{ranks}_log', CSV_NAME), newline='') as f:
                speeds[ranks] = statistics.median(float(row['images_per_second']) for row in csv.DictReader(f)
                                                  if int(row['epoch']) > 1)
    return {'n_ranks': n_ranks, 'images_per_second': speeds[1], 'ranks_images_per_second': speeds[n_ranks],
            'ratio': speeds[n_ranks] / speeds[1]}


def proportional_set_size_mb(pids):
    """The memory of these processes together, counting each shared page once (Pss, Linux)."""
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/smaps_rollup') as f:
                total += next(int(line.split()[1]) for line in f if line.startswith('Pss:'))
        except (OSError, StopIteration):
            pass
    return total / 1024


def train_py_processes(process):
    """The train.py processes of a run: itself, or the ranks that torchrun started."""
    return child_processes(process.pid) or [process.pid]


def shared_data_memory(images, n_ranks, target_mb=500, image_side=64, interval=.2):
    """The peak memory (summed proportional set size) of train.py alone and on n_ranks CPU ranks,
    training one epoch of a small model on a folder of colour images whose cache is about target_mb:
    the images are made from the given ones, upscaled and tinted, written as PNG train/ and test/
    folders, and decoded once into the cache before the runs."""
    per_image = 3 * image_side * image_side
    n_images = max(2, target_mb * 2 ** 20 // per_image)
    picks = torch.arange(n_images) % len(images)
    with tempfile.TemporaryDirectory() as folder:
        root = os.path.join(folder, 'images')
        for split, part in (('train', picks[:n_images * 9 // 10]), ('test', picks[n_images * 9 // 10:])):
            for start in range(0, len(part), 5000):  # a chunk at a time: the folder never sits in memory whole
                chunk = torch.nn.functional.interpolate(images[part[start:start + 5000]].float(), size=image_side)
                tint = torch.tensor([1., .8, .6]).view(1, 3, 1, 1).roll(start // 5000 % 3, 1)
                write_image_folder(os.path.join(root, split), (chunk * tint).to(torch.uint8), start_index=start)
        cache = os.path.join(folder, 'cache')
        env = {**os.environ, 'XDG_CACHE_HOME': cache}
        flags = ['--dataset', 'folder', '--data_dir', root, '--hidden_sizes', '32', '--btl_size', '2',
                 '--n_epochs', '1', '--batch_size', '256', '--verbose', '0', '--no_log']
        peaks = {}
        for ranks in (1, 1, n_ranks):  # the first run decodes the folder into the cache, uncounted
            model_fn = os.path.join(folder, f'm{ranks}.pth')
            process = subprocess.Popen(train_py_command(ranks, torch.device('cpu'), ['--model_fn', model_fn, *flags,
                                                                                      '--overwrite']),
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            peak = 0.
            while process.poll() is None:
                peak = max(peak, proportional_set_size_mb(train_py_processes(process)))
                time.sleep(interval)
            if process.returncode:
                raise RuntimeError(f'train.py on the folder failed: {process.stderr.read()}')
            peaks[ranks] = peak
        cache_mb = sum(os.path.getsize(os.path.join(cache, 'autoencoders', name))
                       for name in os.listdir(os.path.join(cache, 'autoencoders'))) / 2 ** 20
    return {'n_images': n_images, 'cache_mb': cache_mb, 'pss_mb': peaks[1], 'ranks_pss_mb': peaks[n_ranks],
            'n_ranks': n_ranks, 'ratio': peaks[n_ranks] / peaks[1]}


def speed_flags(args):
    """train.py's flags for what bench.py was asked to measure."""
    return ['--amp'] * args.amp + ['--compile'] * args.compile


def main(argv=None):
    args = define_argparser().parse_args(argv)
    set_threads(args.threads)
    device = get_device(args.gpu_id)
    images, source = load_images(args.data_dir)
    device_name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
                   else f'CPU, {torch.get_num_threads()} threads')
    precision = 'bf16 autocast (--amp)' if args.amp else 'fp32'
    print(f'bench.py on {device_name}, torch {torch.__version__}; {precision}{", compiled" * args.compile}; '
          f'data: {source}, {len(images)} images; batch {args.batch_size}; '
          f'median of {args.n_epochs - 1} epochs after one warm-up')
    results = {'device': device_name, 'torch': torch.__version__, 'amp': args.amp, 'compile': args.compile,
               'data': source, 'n_images': len(images), 'batch_size': args.batch_size,
               'date': time.strftime('%Y-%m-%d')}

    for name, config in (('autoencoder', AE), ('vae_784_400_20', VAE)):
        shapes = linear_shapes(build_model(config))
        peak = matmul_throughput([(args.batch_size, i, o) for i, o in shapes], device,
                                 AMP_DTYPE if args.amp else torch.float32, rounds=5)
        seconds, model, n_train, n_valid = time_trainer(config, images, args.batch_size, args.n_epochs, device,
                                                        args.amp, args.compile)
        flops = 3 * forward_flops(shapes) * n_train + forward_flops(shapes) * n_valid
        flops_run = training_flops(shapes) * n_train + forward_flops(shapes) * n_valid
        achieved = flops / seconds / 1e9
        results[name] = {'layers': shapes, 'matmul_gflops': peak, 'epoch_seconds': seconds,
                         'epoch_gflop': flops / 1e9, 'achieved_gflops': achieved, 'share_of_matmul': achieved / peak,
                         'share_of_matmul_run': flops_run / seconds / 1e9 / peak,
                         'inference_images_per_s': inference_throughput(model, images, device)}
        print(f'{name}: matmul {peak:.1f} GFLOP/s on its layer shapes; epoch {seconds:.2f} s '
              f'({n_train} train + {n_valid} valid images, {flops / 1e9:.0f} GFLOP) = {achieved:.1f} GFLOP/s, '
              f'{achieved / peak:.0%} of the matmul throughput', flush=True)

    seconds = time_dataloader(VAE, images, args.batch_size, args.n_epochs, device, args.amp)
    results['vae_784_400_20']['dataloader_epoch_seconds'] = seconds
    results['vae_784_400_20']['speedup_over_dataloader'] = seconds / results['vae_784_400_20']['epoch_seconds']
    print(f'vae_784_400_20 the DataLoader + ToTensor way: epoch {seconds:.2f} s', flush=True)

    if device.type == 'cpu':
        results['peak_rss_mb'] = {n: peak_training_memory_mb(images, n, speed_flags(args))
                                  for n in (len(images), len(images) // 100)}
    results['recipe_steps'] = {}
    for name, recipe in RECIPE_STEPS.items():
        results['recipe_steps'][name] = step = recipe_step_speed(recipe, images, device)
        print(f'{name} step: {step["step_ms"]:.1f} ms, {step["share_of_matmul"]:.0%} of the matmul throughput of its '
              f'products ({step["matmul_gflops"]:.0f} GFLOP/s)', flush=True)
    results['folder_read'] = folder_read_speed(images)
    results['nll'] = nll_speed(images, device)
    results['logging'] = {name: logging_cost(config, images, batch_size, device)
                          for name, config, batch_size in (('autoencoder', AE, args.batch_size),
                                                           ('binarized VAE, batch 100', NLL_VAE, 100))}
    # Ranks: every GPU of the machine when it has several, else 2 on the CPU.
    n_gpus = torch.cuda.device_count() if device.type == 'cuda' else 0
    results['ranks'] = ranks_speed(images, device if n_gpus > 1 else torch.device('cpu'), max(2, n_gpus))
    results['shared_data'] = shared_data_memory(images, 2, args.shared_data_mb)

    print_table(results)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'wrote {args.out}')


def print_table(r):
    ae, vae = r['autoencoder'], r['vae_784_400_20']
    precision = 'bf16' if r['amp'] else 'fp32'
    on_gpu = 'CPU' not in r['device']

    def cpu_target(text):  # the targets are set for the default training, fp32 and eager, on a CPU
        return '' if r['amp'] or r['compile'] or on_gpu else f' (target {text})'

    rows = [
        (f'{precision} matmul throughput on the AE layer shapes', f'{ae["matmul_gflops"]:.1f} GFLOP/s', ''),
        ('AE epoch (Trainer)', f'{ae["epoch_seconds"]:.2f} s',
         f'{ae["share_of_matmul"]:.0%} of matmul{cpu_target(">= 70%")}'
         f'{" (target on an H100: < 0.5 s)" * on_gpu}; {ae["share_of_matmul_run"]:.0%} by the products run'),
        (f'{precision} matmul throughput on the VAE layer shapes', f'{vae["matmul_gflops"]:.1f} GFLOP/s', ''),
        ('VAE epoch (Trainer)', f'{vae["epoch_seconds"]:.2f} s',
         f'{vae["share_of_matmul"]:.0%} of matmul; {vae["share_of_matmul_run"]:.0%} by the products run'),
        ('VAE epoch (DataLoader + ToTensor)', f'{vae["dataloader_epoch_seconds"]:.2f} s',
         f'Trainer is {vae["speedup_over_dataloader"]:.2f}x faster{cpu_target(">= 3x")}'),
        ('AE inference (fp32, as predict.py), encode + decode', f'{ae["inference_images_per_s"]:,.0f} images/s', ''),
        ('VAE inference (fp32, as predict.py), encode + decode', f'{vae["inference_images_per_s"]:,.0f} images/s', ''),
    ]
    if 'peak_rss_mb' in r:
        (n_big, big), (n_small, small) = sorted(r['peak_rss_mb'].items(), reverse=True)
        rows += [(f'train.py peak RSS, {n_big:,} / {n_small:,} images', f'{big:.0f} / {small:.0f} MB',
                  f'difference {big - small:.0f} MB (target <= 100 MB)')]
    folder = r['folder_read']
    rows += [(f'a folder of {folder["n_images"]:,} PNG images, first read (decoding)',
              f'{folder["first_read_images_per_s"]:,.0f} images/s', 'target >= 2,000 images/s'),
             ('the same folder again, from its cache', f'{folder["cached_read_seconds"]:.2f} s', 'target < 1 s')]
    rows += [(f'{name} training step', f'{step["step_ms"]:.1f} ms',
              f'{step["share_of_matmul"]:.0%} of the fp32 matmul throughput of its products{cpu_target(">= 60%")}')
             for name, step in r['recipe_steps'].items()]
    nll = r['nll']
    rows += [(f'-log p(x), {nll["n_samples"]:,} samples per image, VAE 784-300-300-40 gated',
              f'{nll["seconds_per_image"] * 1000:.0f} ms/image',
              f'{nll["test_set_minutes"]:.1f} min for 10,000 images; '
              f'{nll["share_of_matmul"]:.0%} of the decoder\'s fp32 matmul '
              f'[{nll["share_of_matmul_range"][0]:.0%}-{nll["share_of_matmul_range"][1]:.0%}]{cpu_target(">= 60%")}')]
    rows += [(f'train.py log, {name}', f'{cost["difference"]:+.1%}',
              f'epoch time with the log against without ({cost["log_share"]:.2%} of it inside the log\'s calls; '
              f'target <= 2%)') for name, cost in r['logging'].items()]
    ranks, shared = r['ranks'], r['shared_data']
    rows += [(f'default AE, {ranks["n_ranks"]} ranks (torchrun) against 1 process',
              f'{ranks["ratio"]:.2f}x', f'{ranks["ranks_images_per_second"]:,.0f} against '
                                        f'{ranks["images_per_second"]:,.0f} images/s (target on 2 CPU cores >= 0.8x)'),
             (f'memory of {shared["n_ranks"]} ranks against 1, a {shared["cache_mb"]:.0f} MB folder cache',
              f'{shared["ratio"]:.2f}x', f'{shared["ranks_pss_mb"]:.0f} against {shared["pss_mb"]:.0f} MB '
                                         f'(proportional set size; target <= 1.3x)')]
    print_rows(rows)


if __name__ == '__main__':
    run_cli(main, 'bench.py')
