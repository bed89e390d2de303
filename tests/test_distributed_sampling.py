"""sample.py under torchrun: each process on its own GPU (cuda:LOCAL_RANK), the seeds split as NVlabs/edm's
generate.py splits them, and the same PNGs, byte for byte, as one process for every split, including
a process left with no seeds."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cli
import sample
from datasets import build_dataset
from evaluation import fidelity
from sampling_model import SamplingModel, process_device
from config import load_config

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
SAMPLER = ['--steps', '3', '--solver', 'euler_ancestral']  # stochastic steps: each seed's stream throughout


@pytest.fixture
def four_gpus(monkeypatch):
    """CUDA faked with 4 devices, and this process torchrun's third on its node."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setenv('LOCAL_RANK', '2')


def test_each_process_takes_the_gpu_of_its_local_rank(four_gpus, monkeypatch):
    cuda2 = torch.device('cuda', 2)
    assert process_device() == process_device('cuda') == cli.check_device(None) == cli.check_device('cuda') == cuda2
    assert process_device('cuda:1') == cli.check_device('cuda:1') == torch.device('cuda', 1)
    assert process_device('cpu') == cli.check_device('cpu') == torch.device('cpu')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')  # torchrun --nproc_per_node 8: every process says so, the first too
    with pytest.raises(cli.UsageError, match="--device: 8 processes on this machine's 4 CUDA device"):
        cli.check_device(None)
    assert cli.check_device('cuda:0') == torch.device('cuda', 0)  # all on one GPU
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert process_device() == cli.check_device(None) == torch.device('cpu')


def test_sample_script_loads_the_model_on_the_gpu_of_its_local_rank(four_gpus, tiny_mnist_ckpt, tmp_path, monkeypatch):
    moved_to = []
    monkeypatch.setattr(SamplingModel, 'to', lambda model, device: moved_to.append(device) or model)  # stays on cpu
    sample.main(['--ckpt', tiny_mnist_ckpt, '--seeds', '0', *SAMPLER, '--out', str(tmp_path), '--quiet'])
    assert moved_to == [torch.device('cuda', 2)]


@pytest.mark.parametrize('num, batch, world', [(4, 4, 2), (1, 4, 2), (11, 3, 2), (50000, 10000, 8), (7, 1, 3)])
def test_seeds_split_as_nvlabs_edm_splits_them(num, batch, world):
    seeds = list(range(100, 100 + num))
    shares = [sample.rank_batches(seeds, batch, rank, world) for rank in range(world)]
    num_batches = ((num - 1) // (batch * world) + 1) * world  # generate.py's
    edm = [b.tolist() for b in np.array_split(np.array(seeds), num_batches)]
    assert shares == [[b for b in edm[rank::world] if b] for rank in range(world)]
    assert sorted(seed for share in shares for b in share for seed in b) == seeds
    assert all(0 < len(b) <= batch for share in shares for b in share)


def test_split_examples():
    assert [sample.rank_batches(range(4), 4, rank, 2) for rank in range(2)] == [[[0, 1]], [[2, 3]]]
    assert [sample.rank_batches([7], 4, rank, 2) for rank in range(2)] == [[[7]], []]  # process 1: nothing to draw
    assert [len(b) for b in sample.rank_batches(range(50000), 10000, 7, 8)] == [6250]


def _pngs(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob('*.png'))}


def _one_process(ckpt, seeds, out, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    sample.main(['--ckpt', ckpt, '--seeds', seeds, *SAMPLER, '--out', str(out), '--quiet'])
    return _pngs(out)


@pytest.mark.slow
@pytest.mark.parametrize('seeds, batch, world', [('0-3', 4, 2), ('5', 4, 2), ('0-6', 2, 3), ('0-6', 1, 4)])
def test_every_split_writes_the_images_of_one_process(tiny_mnist_ckpt, tmp_path, monkeypatch, seeds, batch, world):
    """The processes of a torchrun, one after the other in this one (without --fid they never talk)."""
    one = _one_process(tiny_mnist_ckpt, seeds, tmp_path / 'one', monkeypatch)
    monkeypatch.setenv('WORLD_SIZE', str(world))
    for rank in range(world):
        monkeypatch.setenv('RANK', str(rank))
        sample.main(['--ckpt', tiny_mnist_ckpt, '--seeds', seeds, '--batch', str(batch), *SAMPLER,
                     '--out', str(tmp_path / 'split'), '--quiet'])
    split = _pngs(tmp_path / 'split')
    assert 'grid.png' in split and split.keys() == one.keys()
    for name, image in one.items():
        assert name == 'grid.png' or split[name] == image, name


@pytest.mark.slow
def test_torchrun_with_more_processes_than_batches_writes_every_image_and_the_metrics(tiny_mnist_ckpt, tmp_path,
                                                                                      monkeypatch):
    """`--seeds 0-3 --batch 4` on 2 processes: one batch of 4 for one process, split in two; both then
    meet rank 0 at the barrier before it computes the metrics of all four."""
    data = build_dataset(load_config('configs/mnist/small.yaml').data)
    fidelity.train_classifier(data, fidelity.classifier_file(data, tmp_path / 'cache'), steps=20)  # briefly
    result = subprocess.run(
        [*TORCHRUN, 'sample.py', '--ckpt', tiny_mnist_ckpt, '--seeds', '0-3', '--batch', '4', *SAMPLER,
         '--out', str(tmp_path / 'two'), '--fid', '--features', 'classifier', '--cache-dir', str(tmp_path / 'cache'),
         '--num-reference', '100', '--metrics', 'fid'],
        env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('frechet_classifier_distance') == 1  # rank 0 alone, over all 4 images
    assert 'fid: 4 images' in result.stdout
    one = _one_process(tiny_mnist_ckpt, '0-3', tmp_path / 'one', monkeypatch)
    two = _pngs(tmp_path / 'two')
    assert two.keys() == one.keys() and 'grid.png' in two
    for name, image in one.items():
        assert name == 'grid.png' or two[name] == image, name
