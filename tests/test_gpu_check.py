"""benchmarks/gpu_check.py, ready for a lent GPU: one line and exit code 2 without one, and its whole
table from the tiny presets on the CPU."""

import sys

import pytest
import torch

from benchmarks import gpu_check


def test_without_cuda_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(sys, 'argv', ['benchmarks/gpu_check.py'])  # the name on its error lines
    for argv, message in (([], 'no CUDA device on this machine (--device cpu --tiny: a smoke test of the script)'),
                          (['--device', 'cpu'], '--device cpu: only with --tiny (the full networks are for a GPU)')):
        with pytest.raises(SystemExit) as info:
            gpu_check.main(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err == f'gpu_check.py: error: {message}\n'


@pytest.mark.slow
def test_the_tiny_check_on_the_cpu_prints_the_whole_table(capsys):
    gpu_check.main(['--device', 'cpu', '--tiny', '--steps', '3', '--warmup', '1', '--batch', '4', '--seeds', '4'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-6].startswith('| network | loop img/s | raw img/s | loop / raw | host syncs per step')
    assert lines[-4].startswith('| DDPM++ |') and lines[-3].startswith('| EDM2 (mp-unet) |')
    assert lines[-1] == 'sample.py, 4 seeds, 2 processes (cpu) against 1: identical, PNG by PNG'
