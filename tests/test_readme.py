"""The documentation's commands: every one of them is accepted by its script, and the README's
quick start runs as written."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

import bench
import oneclass
import predict
import recipes
import train
from helpers import ROOT


def parse_oneclass(argv):
    """oneclass.py's own flags, then the rest as train.py takes them."""
    _, train_flags = oneclass.define_argparser().parse_known_args(argv)
    train.parse_args(train.define_argparser(), ['--model_fn', 'class.pth', *train_flags])


PARSERS = {'train.py': lambda argv: train.parse_args(train.define_argparser(), argv),
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


@pytest.mark.skipif(not os.path.isfile(FASHION_MNIST), reason='needs Fashion-MNIST (apt-get install '
                                                              'dataset-fashion-mnist); .ci/run installs it')
def test_the_quick_start_runs_as_written(tmp_path):
    """In a fresh folder, with the scripts of this checkout, then the predict.py command of the
    tour on the same checkpoint: about two minutes on 2 CPU cores."""
    blocks = dict(bash_blocks(os.path.join(ROOT, 'README.md')))
    commands = blocks['## Quick start'] + blocks['## predict.py']  # the tour's predict.py reads the same ae.pth
    for command in commands:
        _, script, *argv = shlex.split(command)
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=tmp_path,
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, f'{command}: {result.stderr}'
    assert (tmp_path / 'ae.pth').is_file() and (tmp_path / 'ae_predict' / 'metrics.json').is_file()
    assert (tmp_path / 'ae_figures' / 'reconstructions.png').is_file()
