"""A check for a lent GPU, in one table: train.py's loop against a hand-written one on the CIFAR-10
networks under bf16, and sample.py under torchrun against one process.

    python -m benchmarks.gpu_check [--steps 30] [--warmup 5] [--batch 256] [--seeds 1000]
    python -m benchmarks.gpu_check --device cpu --tiny [...]    # the script's own smoke test, in seconds

For DDPM++ (configs/cifar10/ddpmpp.yaml) and EDM2's mp-unet (configs/cifar10/edm2-G.yaml) under
bf16-mixed: the images/s of train.py's loop (`train_overhead.lightning_step_times`) and of the
hand-written forward + backward + Adam + EMA step on the same network (`train_overhead.plain_step_times`,
under bf16 autocast), timed after --warmup steps; their ratio; the host synchronisations per step of
each (`train_overhead.HostSyncs`; train.py's over a separate run that logs every 10 steps); and the
peak CUDA memory of each. CIFAR-10's images are random pixels of their shape: the machine reaches no
network, and a step's time does not depend on the pixels. Last, a 2-step DDPM++ checkpoint draws
--seeds 0..N-1 with sample.py under torchrun, 2 processes (one per GPU, or both on cuda:0 with one
GPU), PNG by PNG against one process. --tiny: the tiny presets of both networks, for the smoke test.
"""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import datasets
import train
from benchmarks import train_overhead
from cli import Parser, UsageError, main_guard
from datasets.images import ImageData
from config import load_config

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name: (config, the tiny preset of its network)
    'DDPM++': ('configs/cifar10/ddpmpp.yaml', 'ddpmpp-tiny'),
    'EDM2 (mp-unet)': ('configs/cifar10/edm2-G.yaml', 'mnist-small'),
}


def random_cifar10(data):
    """1024 images of CIFAR-10's shape and classes, in random pixels."""
    generator = torch.Generator().manual_seed(0)
    return ImageData('cifar10', torch.randint(0, 256, (1024, 3, 32, 32), generator=generator, dtype=torch.uint8),
                     torch.randint(0, 10, (1024,), generator=generator), xflip=data.xflip)


def case_overrides(name, args):
    """The config overrides of case `name` as timed: bf16-mixed, --batch, logs every 10 steps, no checkpoint
    or figure within the run; the data's spectrum from few images and the figures at the end small
    (set-up and wind-down only, outside the timed steps)."""
    return [f'trainer.batch_size={args.batch}', 'trainer.precision=bf16-mixed', 'trainer.log_every=10',
            f"trainer.accelerator={'cpu' if args.device == 'cpu' else 'gpu'}", 'trainer.plot_every=1000000',
            'trainer.ckpt_every=1000000', 'noise.spectrum_samples=256', 'sample.num=4', 'sample.steps=2',
            *([f'network.preset={CASES[name][1]}'] if args.tiny else [])]


def with_peak_memory(device, run):
    """(what `run()` returns, the most CUDA memory it held at once in GiB; nan off CUDA)."""
    if device.type != 'cuda':
        return run(), math.nan
    torch.cuda.reset_peak_memory_stats(device)
    return run(), torch.cuda.max_memory_allocated(device) / 2**30


def plain_bf16_step_times(config, steps, device):
    """`train_overhead.plain_step_times` under bf16 autocast, as train.py's bf16-mixed trains."""
    with torch.autocast(device.type, torch.bfloat16):
        return train_overhead.plain_step_times(config, steps, device)


def measure(name, args, device):
    """One row of the table: {column: value}."""
    config = load_config(CASES[name][0], case_overrides(name, args))
    images_per_s = lambda times: args.batch * train_overhead.window_rates(times, args.warmup, args.steps - args.warmup)[0]  # noqa: E731
    (loop_times, _), loop_memory = with_peak_memory(device, lambda: train_overhead.lightning_step_times(config, args.steps))
    raw_times, raw_memory = with_peak_memory(device, lambda: plain_bf16_step_times(config, args.steps, device))
    with train_overhead.HostSyncs() as raw_syncs:
        plain_bf16_step_times(config, 2, device)
    loop_syncs, _ = train_overhead.host_syncs(config, 20 if not args.tiny else 2)
    loop, raw = images_per_s(loop_times), images_per_s(raw_times)
    return {'network': name, 'loop img/s': f'{loop:.1f}', 'raw img/s': f'{raw:.1f}', 'loop / raw': f'{loop / raw:.3f}',
            'host syncs per step (loop, raw)': f'{loop_syncs:.2f}, {raw_syncs.count / 2:.2f}',
            'peak memory GiB (loop, raw)': f'{loop_memory:.2f}, {raw_memory:.2f}'}


def sampling_check(args, device, folder):
    """One line: whether sample.py's PNGs of --seeds under torchrun with 2 processes are those of 1 process."""
    train.main(['--config', CASES['DDPM++'][0], *case_overrides('DDPM++', args), 'trainer.batch_size=8',
                'trainer.max_steps=2', 'trainer.progress_bar=false', f'run_dir={folder / "run"}'])
    placed = ['--device', 'cpu'] if device.type == 'cpu' else [] if torch.cuda.device_count() > 1 else ['--device', 'cuda:0']
    common = ['sample.py', '--ckpt', str(folder / 'run' / 'checkpoints' / 'last.ckpt'), '--seeds', f'0-{args.seeds - 1}',
              '--solver', 'euler_ancestral', '--steps', '2' if args.tiny else '18', '--quiet', *placed]
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    for launcher, out in (([sys.executable], 'one'), (torchrun, 'two')):
        subprocess.run([*launcher, *common, '--out', str(folder / out)], cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, PYTHONWARNINGS='ignore'))
    one, two = ({p.name: p.read_bytes() for p in (folder / out).glob('[0-9]*.png')} for out in ('one', 'two'))
    differ = sorted(name for name in one if two.get(name) != one[name])
    where = 'cpu' if device.type == 'cpu' else 'one GPU each' if not placed else 'both on cuda:0'
    return (f'sample.py, {args.seeds} seeds, 2 processes ({where}) against 1: '
            + ('identical, PNG by PNG' if one and one.keys() == two.keys() and not differ else
               f'DIFFERENT: {len(one)} and {len(two)} images, {len(differ)} differ (first: {differ[:3]})'))


@main_guard
def main(argv=None):
    parser = Parser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda', help='cpu: only with --tiny')
    parser.add_argument('--tiny', action='store_true', help='tiny presets of both networks: a smoke test of the script')
    parser.add_argument('--steps', type=int, default=30, help='training steps of each loop (default 30)')
    parser.add_argument('--warmup', type=int, default=5, help='steps left out of the timing (default 5)')
    parser.add_argument('--batch', type=int, default=256, help='images per step (default 256)')
    parser.add_argument('--seeds', type=int, default=1000, help='seeds of the sampling check (default 1000)')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('no CUDA device on this machine (--device cpu --tiny: a smoke test of the script)')
    if args.device == 'cpu' and not args.tiny:
        raise UsageError('--device cpu: only with --tiny (the full networks are for a GPU)')
    if not 0 <= args.warmup < args.steps or args.seeds < 2:
        raise UsageError(f'need 0 <= --warmup < --steps and --seeds >= 2 (got {args.warmup}, {args.steps}, {args.seeds})')
    datasets.DATASETS['cifar10'] = random_cifar10
    device = torch.device(args.device, 0) if args.device == 'cuda' else torch.device('cpu')
    rows = [measure(name, args, device) for name in CASES]
    with tempfile.TemporaryDirectory() as folder:
        sampling = sampling_check(args, device, Path(folder))
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'\n{name}, bf16-mixed, batch {args.batch}, {args.steps} steps timed after {args.warmup}'
          + (', tiny presets' if args.tiny else '') + '\n')
    print('| ' + ' | '.join(rows[0]) + ' |')
    print('|' + ' --- |' * len(rows[0]))
    for row in rows:
        print('| ' + ' | '.join(row.values()) + ' |')
    print(f'\n{sampling}')


if __name__ == '__main__':
    main()
