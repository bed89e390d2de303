"""Training throughput of train.py's Lightning loop against a minimal hand-written PyTorch loop.

    python -m benchmarks.train_overhead [--steps 4000] [--warmup 200] [--window 1000] [--repeats 5] [--threads N]
                                        [key=value ...]

The loops train the same model (the default config unless overridden) with the same batch,
optimizer, data and σ draws, loss and EMA update, on the same device, alternating A/B/A/B in
one process. Logging, checkpoints and figures run at the config's intervals, as in a real run:
the default 4000 steps are the whole built-in default run, with a checkpoint every 1000 steps
and figures and sample metrics at step 2000.

Each run after its first `warmup` steps is cut into windows of `window` steps; with the defaults
every window holds one checkpoint. Prints, for each loop, the steps/s of its fastest window over
all repeats (a busy machine only ever slows a window down, so the fastest is the closest to the
loop's own cost), and their ratio train.py / hand-written (target >= 0.85). The seconds spent
drawing figures and sample metrics are left out of train.py's windows, like the maintenance time
EDM's training loop reports apart from its training speed; the ratio of whole runs with them
(fastest run of each) is printed beside it. A third loop, the hand-written step inside a
LightningModule trained by a bare Trainer (no logger, checkpoints, progress bar or callbacks), shows
how much of the difference is Lightning's own loop and how much is train.py's.

`import lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1, under which torch's Adam asks NVML for the
GPU count at every step of a CPU run; train.py's loop trains without it (`RuntimeCudaCheck`), and so
do the hand-written loop (a script that never imports Lightning) and Lightning's own loop. A fourth
loop, the hand-written one under that check, measures what it costs.

Last, the host synchronisations per step of train.py's loop (`StepSyncs`: the `.item()`s and `bool(tensor)`s
of each step, each of which drains a GPU's queue), averaged over the whole run and over the steps that
neither log nor refresh the profile.
"""

import argparse
import contextlib
import copy
import itertools
import tempfile
import time
from pathlib import Path


import lightning as L
import torch
from ema_pytorch import EMA
from torch.utils._python_dispatch import TorchDispatchMode

import train
from config import load_config
from training.loss import edm_loss
from training.module import EDMModule, without_nvml_check


class StepTimer(L.Callback):
    """The time at the start of every step, and at the end of the last (`times`)."""

    def __init__(self):
        self.starts, self.end = [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.end = time.perf_counter()  # callbacks come before the module's hook: before its figures

    @property
    def times(self):
        return self.starts + [self.end]


class HostSyncs(TorchDispatchMode):
    """Within: counts the ops that copy a tensor's value to the host (`count`): `aten._local_scalar_dense`,
    behind `.item()`, `float(t)` and `bool(t)`. (`.tolist()` and `.cpu()` are not ops: the logging steps'
    single `.tolist()` goes uncounted.)"""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class StepSyncs(L.Callback):
    """The host synchronisations of each training step, from its start to the end of its callbacks listed
    before this one (`counts`, one per step)."""

    def __init__(self):
        self.counts, self.mode = [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.mode = HostSyncs()
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)
        self.counts.append(self.mode.count)


@contextlib.contextmanager
def train_py_run(config, steps, callback, progress_bar):
    """(model, Trainer) of train.py for `steps` steps of `config` in a temporary run folder, `callback` added."""
    with tempfile.TemporaryDirectory() as tmp:
        config = copy.deepcopy(config)
        config.run_dir, config.trainer.max_steps, config.trainer.progress_bar = tmp, steps, progress_bar
        torch.manual_seed(config.seed)
        model = EDMModule(config)
        trainer = train.build_trainer(config, Path(tmp))
        trainer.callbacks.append(callback)
        yield model, trainer


def host_syncs(config, steps):
    """(syncs per step over `steps` steps of train.py's loop, the same over the steps that neither log nor
    refresh the profile): counted in a separate run, the counting slows every operation down."""
    counter = StepSyncs()
    with train_py_run(config, steps, counter, progress_bar=False) as (model, trainer):
        trainer.fit(model)
    t, noise = config.trainer, config.noise
    quiet = [count for step, count in enumerate(counter.counts) if (step + 1) % t.log_every and (step + 1) % noise.refresh_every]
    return sum(counter.counts) / len(counter.counts), sum(quiet) / max(len(quiet), 1)


def lightning_step_times(config, steps):
    """(time at each step boundary [steps + 1], [(time, seconds)] of each drawing of figures and sample metrics)."""
    timer = StepTimer()
    with train_py_run(config, steps, timer, progress_bar=True) as (model, trainer):
        figure_seconds = []
        log_figures = model._log_figures

        def timed_log_figures(step):
            start = time.perf_counter()
            log_figures(step)
            figure_seconds.append((start, time.perf_counter() - start))

        model._log_figures = timed_log_figures
        trainer.fit(model)
        return timer.times, figure_seconds


class HandWritten:
    """The minimal loop's state and step: the default model's networks, data and σ distribution
    (built by EDMModule from the config), Adam, the EMA; `step(backward, optimizer)` is one step."""

    def __init__(self, config, device):
        torch.manual_seed(config.seed)
        model = EDMModule(config).to(device)
        self.denoiser, self.dataset, self.noise = model.denoiser, model.dataset.to(device), model.noise
        e = config.ema
        self.ema = EMA(self.denoiser, beta=e.beta, power=e.power, update_after_step=e.update_after_step,
                       update_every=e.update_every, include_online_model=False, use_foreach=True)
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                                          fused=True)  # as train.py's (`EDMModule.configure_optimizers`)
        self.generator = torch.Generator(device).manual_seed(0)
        self.batch_size, self.device = config.trainer.batch_size, device

    def step(self, backward, optimizer):
        n, generator = self.batch_size, self.generator
        x0 = self.dataset.sample(n, generator=generator)
        sigma = self.noise.sample(n, generator=generator, device=self.device)
        loss, _ = edm_loss(self.denoiser, x0, sigma, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        backward(loss.mean())
        optimizer.step()
        self.ema.update()


def plain_step_times(config, steps, device, nvml_check=False):
    """The hand-written loop's step boundaries [steps + 1]: as a script that never imports Lightning
    runs it, or with `nvml_check` under the CUDA check `import lightning` sets (`without_nvml_check`)."""
    loop = HandWritten(config, device)
    times = []
    with contextlib.nullcontext() if nvml_check else without_nvml_check():
        for _ in range(steps):
            times.append(time.perf_counter())
            loop.step(torch.Tensor.backward, loop.optimizer)
            if device.type == 'cuda':
                torch.cuda.synchronize()
    times.append(time.perf_counter())
    return times


class BareModule(L.LightningModule):
    """The hand-written step as a LightningModule under manual optimisation, trained by a Trainer with
    no logger, checkpoints, progress bar or callbacks: what Lightning's loop costs by itself."""

    def __init__(self, config):
        super().__init__()
        object.__setattr__(self, 'loop', HandWritten(config, torch.device('cpu')))
        self.denoiser = self.loop.denoiser
        self.automatic_optimization = False

    def train_dataloader(self):
        return itertools.count()

    def configure_optimizers(self):
        return self.loop.optimizer

    def on_train_start(self):
        self.loop.ema.to(self.device)
        self.loop.dataset.to(self.device)
        self.loop.device, self.loop.generator = self.device, torch.Generator(self.device).manual_seed(0)

    def training_step(self, batch, batch_idx):
        self.loop.step(self.manual_backward, self.optimizers())


def bare_lightning_step_times(config, steps):
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    with without_nvml_check():  # as train.py trains (RuntimeCudaCheck): Lightning's loop alone
        trainer.fit(BareModule(config))
    return timer.times


def left_out_seconds(begin, end, left_out):
    """Seconds of the spans `left_out` [(start time, seconds)] that start between times `begin` and `end`."""
    return sum(seconds for start, seconds in left_out if begin <= start < end)


def window_rates(times, warmup, window, left_out=()):
    """steps/s of each whole window of `window` steps after `warmup`, less the spans `left_out` in it."""
    rates = []
    for start in range(warmup, len(times) - window, window):
        begin, end = times[start], times[start + window]
        rates.append(window / (end - begin - left_out_seconds(begin, end, left_out)))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--config', default='configs/toy/default.yaml')
    parser.add_argument('--steps', type=int, default=4000)
    parser.add_argument('--warmup', type=int, default=200)
    parser.add_argument('--window', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, help="torch's CPU threads (default: torch's own choice, one per core)")
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args()
    if not 0 <= args.warmup < args.warmup + args.window <= args.steps:
        parser.error(f'need 0 <= --warmup < --warmup + --window <= --steps (got {args.warmup}, {args.window}, {args.steps})')
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    windows = {'plain': [], 'nvml': [], 'bare': [], 'train': []}
    runs = {'plain': [], 'train': []}
    figures = []
    timed = args.steps - args.warmup
    for _ in range(args.repeats):
        times = plain_step_times(config, args.steps, device)
        windows['plain'] += window_rates(times, args.warmup, args.window)
        runs['plain'].append(timed / (times[-1] - times[args.warmup]))
        windows['nvml'] += window_rates(plain_step_times(config, args.steps, device, nvml_check=True), args.warmup, args.window)
        windows['bare'] += window_rates(bare_lightning_step_times(config, args.steps), args.warmup, args.window)
        times, figure_seconds = lightning_step_times(config, args.steps)
        windows['train'] += window_rates(times, args.warmup, args.window, figure_seconds)
        runs['train'].append(timed / (times[-1] - times[args.warmup]))
        figures.append(left_out_seconds(times[args.warmup], times[-1], figure_seconds))
    best = {name: max(rates) for name, rates in windows.items()}
    values = lambda rates: ', '.join(f'{v:.0f}' for v in rates)  # noqa: E731
    print(f'device {device}, threads {torch.get_num_threads()}, batch {config.trainer.batch_size}, {args.repeats} runs '
          f'of {args.steps} steps each, timed after step {args.warmup}, in windows of {args.window} steps')
    print(f"hand-written loop:         fastest window {best['plain']:6.1f} steps/s   (windows: {values(windows['plain'])})")
    print(f"hand-written, NVML check:  fastest window {best['nvml']:6.1f} steps/s   (windows: {values(windows['nvml'])})")
    print(f"Lightning's own loop:      fastest window {best['bare']:6.1f} steps/s   (windows: {values(windows['bare'])})")
    print(f"train.py loop:             fastest window {best['train']:6.1f} steps/s   (windows: {values(windows['train'])}; "
          f"figures and sample metrics left out: {', '.join(f'{s:.1f}' for s in figures)} s a run)")
    print(f"ratio train.py / hand-written: {best['train'] / best['plain']:.3f}  (target >= 0.85); "
          f"Lightning's own loop / hand-written: {best['bare'] / best['plain']:.3f}; "
          f"train.py / Lightning's own loop: {best['train'] / best['bare']:.3f}")
    print(f"hand-written under the NVML check that `import lightning` sets / without it: {best['nvml'] / best['plain']:.3f}")
    print(f"whole runs, figures included, fastest of each: hand-written {max(runs['plain']):.1f} steps/s, "
          f"train.py {max(runs['train']):.1f} steps/s, ratio {max(runs['train']) / max(runs['plain']):.3f}")
    per_step, quiet = host_syncs(config, args.steps)
    print(f"host synchronisations per step of train.py's loop: {per_step:.3f} over the run "
          f"(log_every {config.trainer.log_every}, ckpt_every {config.trainer.ckpt_every}), "
          f"{quiet:.3f} in the steps that neither log nor refresh")


if __name__ == '__main__':
    main()
