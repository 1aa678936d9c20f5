"""Trains an AutoEncoder or a VAE on MNIST, Fashion-MNIST or a folder of images and saves it as a .pth
checkpoint.

    python train.py --model_fn ae.pth --btl_size 2

The flags (flags.py) give the run's RunConfig (config.py); pipeline.py trains it into the checkpoint
(checkpoint.py), one epoch after another (trainer.py).
"""
import sys

import distributed
import flags
import pipeline
from utils import run_cli, set_threads


def main(argv=None):
    config, options, given = flags.parse(sys.argv[1:] if argv is None else argv)
    set_threads(options.threads)
    ranks, device = distributed.start(options.gpu_id)
    try:
        pipeline.train(config, options, given, ranks, device)
    except RuntimeError:
        if ranks.is_main:
            raise
        sys.exit(1)  # another rank ended, and rank 0 says why in one line
    ranks.end()


if __name__ == '__main__':
    run_cli(main, 'train.py')
