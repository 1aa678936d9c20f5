"""The documentation's commands: every one of them is accepted by its script, and every README
command runs offline on Fashion-MNIST, shortened."""
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

import bench
import oneclass
import predict
import recipes
import flags
from config import DEFAULTS
from data_loader import write_image_folder
from helpers import ROOT, flag_values, make_images


def parse_oneclass(argv):
    """oneclass.py's own flags, then the rest as train.py takes them."""
    _, train_flags = oneclass.define_argparser().parse_known_args(argv)
    flags.parse(['--model_fn', 'class.pth', *train_flags])


PARSERS = {'train.py': flags.parse,
           'predict.py': lambda argv: predict.define_argparser().parse_args(argv),
           'bench.py': lambda argv: bench.define_argparser().parse_args(argv),
           'recipes.py': lambda argv: recipes.define_argparser().parse_args(argv),
           'oneclass.py': parse_oneclass}
FASHION_MNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'


def bash_blocks(path):
    """The ```bash blocks of a markdown file, each as a list of (heading it is under, command)."""
    blocks, heading = [], None
    for match in re.finditer(r'^(#+ [^\n]*)$|^```bash\n(.*?)^```', open(path).read(), re.M | re.S):
        if match.group(1):
            heading = match.group(1)
            continue
        lines = [line.split('  #')[0].strip() for line in match.group(2).splitlines()]
        blocks.append((heading, [line for line in lines if line]))
    return blocks


def script_commands():
    docs = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    return [(os.path.basename(path), command) for path in docs for _, block in bash_blocks(path)
            for command in block if command.split()[:2][-1] in PARSERS]


def test_the_docs_hold_commands_of_every_script():
    assert {command.split()[1] for _, command in script_commands()} == set(PARSERS)


@pytest.mark.parametrize('doc, command', script_commands())
def test_every_command_in_the_docs_is_accepted_by_its_script(doc, command, capsys):
    _, script, *argv = shlex.split(command)
    try:
        PARSERS[script](argv)
    except SystemExit:
        pytest.fail(f'{doc}: {command}: {capsys.readouterr().err.strip()}')


def test_the_readme_test_command_is_the_one_ci_runs():
    blocks = dict(bash_blocks(os.path.join(ROOT, 'README.md')))
    assert blocks['## Test'] == ['python -m pytest -q tests']
    assert 'python -m pytest -q tests' in open(os.path.join(ROOT, '.ci', 'run')).read()


def shortened(script, argv):
    """A README command cut to a check of seconds: train.py trains 1 to 3 epochs in the same order
    as the command's (20 -> 1, 40 -> 2, 60 and more -> 3, so that --resume still trains on), on two
    classes of Fashion-MNIST, oneclass.py one class, recipes.py one
    epoch of each recipe."""
    flags = flag_values(argv)
    if script == 'train.py':
        epochs = int(flags.get('--n_epochs', ['20'])[0])
        flags['--n_epochs'] = [str(min(-(-epochs // 20), 3))]
        if flags.get('--dataset') == ['fashion_mnist']:
            flags['--target_labels'] = ['0', '1']
    elif script == 'oneclass.py':
        flags.update({'--classes': ['0'], '--n_epochs': ['1']})
    elif script == 'recipes.py':
        flags['--recipe_epochs'] = ['1']
    return [arg for flag, values in flags.items() for arg in (flag, *values)]


def readme_commands():
    return [command for _, block in bash_blocks(os.path.join(ROOT, 'README.md')) for command in block
            if command.split()[:2][-1] in PARSERS]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(FASHION_MNIST), reason='needs Fashion-MNIST (apt-get install '
                                                              'dataset-fashion-mnist); .ci/run installs it')
def test_every_readme_command_runs_offline_in_order(tmp_path):
    """Every command of the README, in its order, in a fresh folder with a folder of images for
    "Your own images" and no network: each ends well, shortened to seconds of training."""
    images, labels = make_images(120, seed=0)
    write_image_folder(str(tmp_path / 'my_images'), torch.from_numpy(images)[:, None], torch.from_numpy(labels))
    env = {**os.environ, 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    quick_start = dict(bash_blocks(os.path.join(ROOT, 'README.md')))['## Quick start']
    for command in readme_commands():
        _, script, *argv = shlex.split(command)
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *shortened(script, argv)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=1800, env=env)
        assert result.returncode == 0, f'{command}: {result.stderr}'
        if command == quick_start[-1]:  # the quick start's outputs, before later commands train ae.pth again
            assert (tmp_path / 'ae_predict' / 'metrics.json').is_file()
    assert (tmp_path / 'ae_figures' / 'reconstructions.png').is_file()
    assert not (tmp_path / 'data').exists()  # nothing looked for MNIST, nothing was made for it


def reference_table_flags(heading):
    """The flags named in the first column of the table under a heading of docs/reference.md, and
    the default that the table gives each."""
    text = open(os.path.join(ROOT, 'docs', 'reference.md')).read()
    section = text.split(f'\n{heading}\n')[1].split('\n## ')[0]
    flags = {}
    for row in re.findall(r'^\| (`--[^|]*) \| ([^|]*) \|', section, re.M):
        names = [name for name in re.findall(r'`--([\w-]+)', row[0]) if not name.startswith('no-')]
        for name, default in zip(names, [d.strip() for d in row[1].split(',')] * len(names)):
            flags[name] = default
    return flags


def test_the_reference_table_of_train_py_holds_every_flag_with_its_default():
    documented = reference_table_flags('## train.py')
    parser = flags.define_argparser()
    names = {action.dest for action in parser._actions if action.dest != 'help'}
    assert documented.keys() == names
    for name, default in documented.items():
        if name in DEFAULTS and re.fullmatch(r'[-\d.e]+', default):
            assert float(default) == float(DEFAULTS[name]), name


def reference_row(heading, flag):
    """The row of docs/reference.md's table under heading whose first column names flag."""
    text = open(os.path.join(ROOT, 'docs', 'reference.md')).read()
    section = text.split(f'\n{heading}\n')[1].split('\n## ')[0]
    return next(line for line in section.splitlines() if line.startswith(f'| `{flag}`'))


@pytest.mark.parametrize('heading, flag, registry', [
    ('## train.py', '--activation', 'model.ACTIVATIONS'),
    ('## train.py', '--arch', 'model.ARCHITECTURES'),
    ('## train.py', '--prior', 'distributions.PRIORS'),
    ('## train.py', '--likelihood', 'distributions.LIKELIHOODS'),
    ('## predict.py', '--anomaly_score', 'anomaly.SCORES'),
])
def test_the_reference_rows_that_list_a_registry_name_each_of_its_entries(heading, flag, registry):
    """A name added to a registry must be added to the docs' row too: this fails until it is."""
    module, name = registry.split('.')
    documented = set(re.findall(r'`([\w-]+)`', reference_row(heading, flag)))
    missing = set(getattr(importlib.import_module(module), name)) - documented
    assert not missing, f'docs/reference.md, {flag}: add {sorted(missing)}'
