"""Small helpers of the command-line scripts: one-line errors, flag types, devices, output folders,
sibling scripts, seeds, tables."""
import argparse
import contextlib
import ctypes
import ctypes.util
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm


class CliError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit code 2."""
    exit_code, kind = 2, 'error'


class RunStopped(CliError):
    """A run that ended before its last epoch (a signal, a non-finite loss, a lost rank), reported as
    one line that says what its checkpoint holds, with its own exit code."""
    kind = 'stopped'

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n' if is_main_process() else None)


def default_to_none(parser, defaults):
    """Makes every flag of parser that defaults holds default to None, so that a flag given on the
    command line is told from one left out (RunConfig.from_flags fills in the rest); a help text's
    %(default)s still shows the value from defaults. Returns the parser."""
    for action in parser._actions:
        if action.dest in defaults:
            action.default = None
            if action.help:
                action.help = action.help.replace('%(default)s', str(defaults[action.dest]))
    return parser


def run_cli(main, prog):
    """Runs main(); a CliError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except CliError as e:
        if is_main_process():
            print(f'{prog}: {e.kind}: {e}', file=sys.stderr)
        sys.exit(e.exit_code)


def is_main_process():
    """False in the ranks after the first of a torchrun launch: what every rank would say, rank 0 says once."""
    return os.environ.get('RANK', '0') == '0'


def first_line(error):
    """The first line of an exception's message, for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def int_at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text}')
        return value
    parse.__name__ = 'int'  # argparse names the type in its "invalid int value" message
    return parse


def float_in(low, high, low_open=True, high_open=True):
    """A float in an interval; the flag's error names the interval."""
    def parse(text):
        value = float(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f'must be in {interval}, got {text}')
        return value
    parse.__name__ = 'float'
    return parse


def default_gpu_id():
    return 0 if torch.cuda.is_available() else -1


def add_device_flags(parser):
    """--gpu_id and --threads, the same in every script."""
    parser.add_argument('--gpu_id', type=int, default=default_gpu_id(),
                        help='CUDA device index, -1 for the CPU (default: 0 when CUDA is available, else -1)')
    parser.add_argument('--threads', type=int_at_least(1), default=None,
                        help="torch's threads for the CPU's work (default: torch's own choice, every core of the "
                             'machine, or 1 a rank under torchrun); on a machine shared with other jobs, give each job '
                             'its share of the cores: threads that outnumber the free cores wait on each other')


def set_threads(threads):
    if threads:
        torch.set_num_threads(threads)


def threads_flag(args):
    """--threads as given to a script, to pass on to the scripts it runs."""
    return ['--threads', str(args.threads)] if args.threads else []


def progress_bar(iterable=None, shown=True, **tqdm_args):
    """A tqdm bar, drawn when shown and the output is a terminal: a log file gets the scripts' plain
    lines, not a bar's redraws."""
    return tqdm(iterable, disable=None if shown else True, **tqdm_args)


def make_out_dir(path, flag='--out_dir'):
    """Creates the output folder that flag names, with its parents; one that cannot be made is one
    line naming the flag. Returns path."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CliError(f'{flag} {path}: cannot create it ({e.strerror or first_line(e)})')
    return path


def file_mode():
    """The permissions that open() would give a new file under the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path, mode='wb', durable=True, **open_args):
    """A file to write path through: a temporary file beside it, renamed over path when the block ends
    without an error, so that an interrupted write leaves the previous file (or none), never a truncated
    one. It gets the permissions of the user's umask (mkstemp would leave 0600). durable: on the disk
    before the rename (fsync, some milliseconds), so that a power cut too leaves a whole file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def child_processes(pid):
    """The ids of the processes whose parent is pid (Linux /proc), e.g. the ranks that torchrun started."""
    children = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:  # the field after the command's name
                    children.append(int(entry))
        except (OSError, ValueError, IndexError):  # not a process, or one that ended meanwhile
            continue
    return children


def run_sibling(script, args, failure, python_args=()):
    """Runs a script of this folder (train.py, predict.py) with args in a Python of its own and
    returns what it printed; when it fails, its own one-line error (the last line it wrote on
    stderr) ends the caller as 'failure: that line'."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    result = subprocess.run([sys.executable, *python_args, path, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(f'{failure}: {last_line(result.stderr)}')
    return result.stdout


def get_device(gpu_id):
    if gpu_id < 0:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise CliError(f'--gpu_id {gpu_id}: CUDA is not available on this machine; use --gpu_id -1 for the CPU')
    if gpu_id >= torch.cuda.device_count():
        raise CliError(f'--gpu_id {gpu_id}: this machine has {torch.cuda.device_count()} CUDA device(s), '
                       f'numbered from 0')
    return torch.device(f'cuda:{gpu_id}')


# Evaluation draws its random numbers (a VAE's codes) from this seed: every epoch's valid loss
# and predict.py's test losses come from the same draws, so that they compare and reproduce.
EVAL_SEED = 0
# The images evaluated at once (validation, predict.py): with no backward pass to hold memory for,
# larger batches use the matrix products better (docs/performance.md).
EVAL_BATCH_SIZE = 1024


@contextlib.contextmanager
def seeded(seed, device):
    """Random numbers from seed inside the block; the caller's, on the CPU and on device, are
    left as they were after it."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


# glibc's mallopt parameters (malloc.h) and the values that keep_freed_memory sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HELD_MEMORY = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30}


def keep_freed_memory():
    """Asks glibc to serve tensors of up to 256 MiB from memory the process keeps, and to keep up
    to 1 GiB of freed memory, instead of giving each large block back to the system when a tensor
    is freed and mapping it afresh, page fault by page fault, for the next. A loop that makes and
    frees tensors of a few MB many times (the importance-sampled -log p(x)) then runs about 1.5
    times faster on a CPU (docs/performance.md). Without glibc it does nothing."""
    name = ctypes.util.find_library('c')
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return
    for parameter, value in HELD_MEMORY.items():
        mallopt(parameter, value)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA as well


def last_line(text):
    """A script's own error is the last line it wrote (warnings may come before it)."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else 'no message'


def print_rows(rows):
    """(label, value, note) rows as an aligned table."""
    width = max(len(row[0]) for row in rows)
    print()
    for label, value, note in rows:
        print(f'{label:<{width}}  {value:>18}  {note}')
