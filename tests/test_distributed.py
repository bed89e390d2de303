"""Two CPU processes over gloo: Lightning's launcher and torchrun, resume, batch splitting, SLURM
requeue, and a rank that dies. Every process runs under a timeout, so a hang fails instead of
stalling CI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from evaluation import fidelity
from config import ConfigError, load_config
from datasets import build_dataset
from training.module import batch_split

from .test_reliability import SMALL, _SendSignal, _with_callback, assert_same_training_state

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
RUN = SMALL + ['trainer.batch_size=64', 'trainer.ckpt_every=10', 'trainer.accelerator=cpu', 'trainer.devices=2']
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']


def _run(argv, timeout=300, env=None):
    result = subprocess.run(argv, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _checkpoint(run_dir, name='last.ckpt'):
    return torch.load(run_dir / 'checkpoints' / name, weights_only=True)


def test_lightning_launcher_trains_two_ranks_with_their_own_streams(tmp_path):
    result = _run([sys.executable, 'train.py', *RUN, 'trainer.max_steps=20', f'run_dir={tmp_path}'])
    assert result.stdout.count('cedm: done at step 20') == 1  # rank 0 alone reports
    checkpoint = _checkpoint(tmp_path)
    ranks = checkpoint['cedm']['ranks']
    assert checkpoint['global_step'] == 20 and len(ranks) == 2
    assert not torch.equal(ranks[0]['data'], ranks[1]['data']) and not torch.equal(ranks[0]['sigma'], ranks[1]['sigma'])
    assert checkpoint['cedm']['profile']['num_refreshes'] == 2  # steps 7 and 14


def test_ranks_agree_on_weights_ema_and_profile_and_draw_their_own_noise(tmp_path):
    _run([*TORCHRUN, 'tests/ddp_probe.py', *RUN, 'trainer.max_steps=20', 'ema.posthoc=true', 'ema.snapshot_every=10',
          f'run_dir={tmp_path / "run"}'], env={'CEDM_PROBE_DIR': str(tmp_path)})
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    for key in ('weights', 'ema', 'profile'):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]) if torch.is_tensor(value) else value == ranks[1][key][name], (key, name)
    assert ranks[0]['profile']['num_refreshes'] == 2 and ranks[0]['ema']['step'] == 20
    assert not torch.equal(ranks[0]['data'], ranks[1]['data']) and not torch.equal(ranks[0]['sigma'], ranks[1]['sigma'])
    # Dropout draws from each rank's own global stream (the network's initialisation was the same).
    assert not torch.equal(ranks[0]['dropout'], ranks[1]['dropout'])
    # Rank 0 alone holds (updates, snapshots) the post-hoc EMA, and computes the spectrum, which it shares.
    assert [r['posthoc'] for r in ranks] == [True, False] and [r['spectrum_calls'] for r in ranks] == [1, 0]
    assert torch.equal(ranks[0]['spectrum'], ranks[1]['spectrum'])
    assert sorted(p.name for p in (tmp_path / 'run' / 'posthoc-ema').glob('*.pt')) == ['0.10.pt', '0.20.pt', '1.10.pt', '1.20.pt']


def test_torchrun_and_resume_of_a_two_process_run_is_bit_identical(tmp_path):
    _run([*TORCHRUN, 'train.py', *RUN, 'trainer.max_steps=25', f'run_dir={tmp_path / "a"}'])  # ckpt_every 10
    _run([*TORCHRUN, 'train.py', '--resume', str(tmp_path / 'a' / 'checkpoints' / 'step-0000010.ckpt'),
          f'run_dir={tmp_path / "b"}'])
    a, b = _checkpoint(tmp_path / 'a'), _checkpoint(tmp_path / 'b')
    assert a['global_step'] == 25
    for run, expected in (('a', ['last.ckpt', 'step-0000010.ckpt', 'step-0000020.ckpt']), ('b', ['last.ckpt', 'step-0000020.ckpt'])):
        assert sorted(p.name for p in (tmp_path / run / 'checkpoints').glob('*.ckpt')) == expected
    assert_same_training_state(a, b)


def test_a_loss_infinite_on_one_rank_only_is_skipped_by_every_rank(tmp_path):
    """Rank 1's loss overflows in batches 3, 4 and 12 while every gradient stays finite: both ranks
    skip those steps (the ranks share the finding), stay in step and end with the same weights."""
    _run([*TORCHRUN, 'tests/ddp_probe.py', *RUN, 'trainer.max_steps=25', 'trainer.collective_timeout=60',
          f'run_dir={tmp_path / "run"}'], env={'CEDM_PROBE_DIR': str(tmp_path), 'CEDM_PROBE_INF_LOSS': '1:3,4,12'})
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    assert [r['nonfinite_steps'] for r in ranks] == [3, 3] and [r['global_step'] for r in ranks] == [25, 25]
    for name, value in ranks[0]['weights'].items():
        assert torch.equal(value, ranks[1]['weights'][name]), name
    last = _checkpoint(tmp_path / 'run')
    assert last['global_step'] == 25 and last['cedm']['nonfinite_steps'] == 3


def test_ranks_that_resume_different_steps_stop_at_once_in_one_line(tmp_path):
    """Rank 0 resumes step 10 while rank 1 starts afresh (a run_dir that one node does not see): both stop
    at the start, naming each rank's step, instead of meeting in mismatched collectives until the timeout."""
    _run([sys.executable, 'train.py', *SMALL, 'trainer.batch_size=64', 'trainer.ckpt_every=10', 'trainer.max_steps=10',
          f'run_dir={tmp_path / "a"}'])
    script = tmp_path / 'rank_argv.py'  # train.py, with --resume on rank 0 only
    script.write_text(f'import os, sys\nsys.path.insert(0, {str(Path.cwd())!r})\nimport train\n'
                      f"train.main(sys.argv[1:] + (['--resume', {str(tmp_path / 'a' / 'checkpoints' / 'last.ckpt')!r}] "
                      "if os.environ['RANK'] == '0' else []))\n")
    start = time.monotonic()
    result = subprocess.run([*TORCHRUN, str(script), *RUN, 'trainer.max_steps=30', 'trainer.collective_timeout=120',
                             f'run_dir={tmp_path / "b"}'], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and time.monotonic() - start < 100
    lines = [line for line in result.stderr.splitlines() if 'the ranks start from different steps' in line]
    # Every rank stops with this line, unless torchrun ends the others first on seeing one fail.
    assert lines and lines[0].endswith('(rank 0: step 10, rank 1: step 0); every rank must resume the same '
                                                 'checkpoint (a run_dir on a file system that every node sees)'), result.stderr[-3000:]


def test_torchrun_needs_an_explicit_run_dir():
    result = subprocess.run([*TORCHRUN, 'train.py', *RUN], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'train.py: error: run_dir: give run_dir=PATH when launching with torchrun' in result.stderr


def test_a_rank_that_dies_ends_the_run_instead_of_hanging(tmp_path):
    process = subprocess.Popen([*TORCHRUN, 'train.py', *RUN, 'trainer.max_steps=100000', 'trainer.collective_timeout=30',
                                f'run_dir={tmp_path}'], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (tmp_path / 'checkpoints' / 'step-0000010.ckpt').exists():
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    workers = subprocess.run(['pgrep', '-P', str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)
    assert process.wait(timeout=120) != 0


def test_global_batch_splits_over_ranks_and_passes():
    t = load_config('configs/toy/default.yaml', ['trainer.batch_size=512', 'trainer.batch_gpu=64']).trainer
    assert batch_split(t, 1) == (512, 64) and batch_split(t, 4) == (128, 64) and batch_split(t, 8) == (64, 64)
    with pytest.raises(ConfigError, match='trainer.batch_size: 512 does not split over 3 devices'):
        batch_split(t, 3)
    t.batch_gpu = 48
    with pytest.raises(ConfigError, match='trainer.batch_gpu: 48 does not divide the 512 samples per device'):
        batch_split(t, 1)


def test_gradient_accumulation_trains(tmp_path):
    train.main(SMALL + ['trainer.batch_size=64', 'trainer.batch_gpu=16', 'trainer.max_steps=10', f'run_dir={tmp_path}'])
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint['global_step'] == 10 and checkpoint['cedm']['ema']['step'] == 10


def test_slurm_time_limit_signal_requeues_the_job(tmp_path, monkeypatch, capsys):
    bin_dir, calls = tmp_path / 'bin', tmp_path / 'scontrol-calls'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / 'scontrol').chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}:{os.environ["PATH"]}')
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    build = train.build_trainer
    monkeypatch.setattr(train, 'build_trainer',
                        lambda *args: _with_callback(build(*args), _SendSignal(signal.SIGUSR1, 5)))
    with pytest.raises(SystemExit) as info:
        train.main(SMALL + ['trainer.max_steps=50', f'run_dir={tmp_path / "run"}'])
    assert info.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ['requeue', '4242']
    assert 'cedm: SLURM job 4242 requeued' in capsys.readouterr().err


def test_torchrun_sampling_shares_out_the_seeds_and_matches_one_process(tmp_path):
    run_dir = tmp_path / 'run'
    train.main(['--config', 'configs/mnist/small.yaml', 'network.preset=ddpmpp-tiny', 'trainer.max_steps=2',
                'trainer.batch_size=4', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
                'noise.spectrum_samples=256', f'run_dir={run_dir}'])
    ckpt = str(run_dir / 'checkpoints' / 'last.ckpt')
    # A classifier trained briefly, in the cache sample.py reads: the test is about sharing out the
    # seeds, not about the classifier (fid.py's own training of it is tested with the image metrics).
    data = build_dataset(load_config('configs/mnist/small.yaml').data)
    fidelity.train_classifier(data, fidelity.classifier_file(data, tmp_path / 'cache'), steps=20)
    common = ['sample.py', '--ckpt', ckpt, '--seeds', '0-10', '--batch', '3', '--steps', '3', '--solver', 'euler_ancestral']
    classifier = ['--fid', '--features', 'classifier', '--cache-dir', str(tmp_path / 'cache'), '--num-reference', '100',
                  '--metrics', 'fid', '--json', str(tmp_path / 'fid.json')]
    result = _run([*TORCHRUN, *common, '--out', str(tmp_path / 'two'), *classifier], timeout=600)
    assert result.stdout.count('frechet_classifier_distance') == 1  # rank 0 alone, over all 11 images
    assert 'frechet_classifier_distance' in (tmp_path / 'fid.json').read_text()
    _run([sys.executable, *common, '--out', str(tmp_path / 'one')])
    names = sorted(p.name for p in (tmp_path / 'one').glob('0*.png'))
    assert names == [f'{s:06d}.png' for s in range(11)]
    assert sorted(p.name for p in (tmp_path / 'two').glob('0*.png')) == names
    for name in names:
        assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'two' / name).read_bytes(), name
