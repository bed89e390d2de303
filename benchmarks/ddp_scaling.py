"""Data-parallel scaling: train.py's steps/s and images/s with 1 and 2 processes on the same global
batch (Lightning's launcher, DDP), and their ratio, on the device it runs on.

    python -m benchmarks.ddp_scaling [--accelerator cpu|gpu] [--config FILE] [--batch 512] [--steps 300 600]

Start-up (imports, process launch, set-up) is taken out by timing two run lengths per process
count: steps/s = (long − short) / (time(long) − time(short)). On a 2-core CPU the two processes
share the cores one each, so the ratio measures the overhead of DDP there, not a speed-up.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(processes, steps, args, run_dir):
    command = [sys.executable, 'train.py', f'trainer.max_steps={steps}', f'trainer.batch_size={args.batch}',
               f'trainer.accelerator={args.accelerator}', f'trainer.devices={processes}', 'trainer.progress_bar=false',
               f'trainer.plot_every={10 * steps}', f'trainer.ckpt_every={10 * steps}', f'run_dir={run_dir}']
    if args.config:
        command[2:2] = ['--config', args.config]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--accelerator', default='cpu')
    parser.add_argument('--config', help='YAML config (default: the built-in toy default)')
    parser.add_argument('--batch', type=int, default=512, help='global batch (default 512)')
    parser.add_argument('--steps', type=int, nargs=2, default=[300, 600], help='the short and the long run')
    args = parser.parse_args()
    short, long = args.steps
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            times = [timed_run(processes, steps, args, Path(tmp) / f'{processes}-{steps}') for steps in (short, long)]
            steps_per_s = (long - short) / (times[1] - times[0])
            rows[processes] = steps_per_s
    print(f'accelerator {args.accelerator}, global batch {args.batch}, {args.config or "configs/toy/default.yaml"}\n')
    print('| processes | steps/s | images/s |')
    print('| --- | --- | --- |')
    for processes, steps_per_s in rows.items():
        print(f'| {processes} | {steps_per_s:.1f} | {steps_per_s * args.batch:.0f} |')
    print(f'\n2 processes / 1 process, steps/s on the same global batch: {rows[2] / rows[1]:.2f}')


if __name__ == '__main__':
    main()
