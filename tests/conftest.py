import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # the scripts, like EDM's, run from the repository root
torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust to a busy machine


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """A 70-step training run on the ring (in-process; periodic checkpoints at 30 and 60, the final
    state in last.ckpt alone); returns its run directory."""
    import train

    run_dir = tmp_path_factory.mktemp('runs') / 'tiny'
    train.main(['trainer.max_steps=70', 'trainer.ckpt_every=30', 'trainer.plot_every=30', 'trainer.log_every=10',
                'trainer.progress_bar=false', 'sample.num=200', 'trainer.batch_size=128', 'ema.update_after_step=10', f'run_dir={run_dir}'])
    return run_dir


@pytest.fixture(scope='session')
def tiny_mnist_ckpt(tmp_path_factory):
    """A 2-step class-conditional MNIST run of the ddpmpp-tiny UNet (mnist-5k, no download); returns the
    path of its last.ckpt."""
    import train

    run_dir = tmp_path_factory.mktemp('mnist') / 'tiny'
    train.main(['--config', 'configs/mnist/small.yaml', 'network.preset=ddpmpp-tiny', 'trainer.max_steps=2',
                'trainer.batch_size=4', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
                'noise.spectrum_samples=256', f'run_dir={run_dir}'])
    return str(run_dir / 'checkpoints' / 'last.ckpt')
