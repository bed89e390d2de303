"""Training throughput of train.py's Lightning loop against a minimal hand-written PyTorch loop.

    python benchmarks/train_overhead.py [--steps 4000] [--warmup 200] [--repeats 2] [key=value ...]

Both loops train the same model (the default config unless overridden) with the same batch,
optimizer, data and σ draws, loss and EMA update, on the same device, alternating A/B/A/B in
one process. Prints steps/s of each and the ratio Lightning / hand-written (target >= 0.85).
Logging, figures and checkpoints run at the config's intervals, as in a real run: the default
4000 steps are the whole built-in default run, so the timed window holds its checkpoints and
its figures at step 2000.
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from ema_pytorch import EMA  # noqa: E402

import train  # noqa: E402
from training.config import load_config  # noqa: E402
from training.loss import edm_loss  # noqa: E402
from training.module import EDMModule  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_steps_per_s(config, steps, warmup):
    with tempfile.TemporaryDirectory() as tmp:
        config = copy.deepcopy(config)
        config.run_dir, config.trainer.max_steps, config.trainer.progress_bar = tmp, steps, True
        torch.manual_seed(config.seed)
        model = EDMModule(config)
        trainer = train.build_trainer(config, Path(tmp))
        timer = StepTimer(warmup)
        trainer.callbacks.append(timer)
        trainer.fit(model)
        return (steps - warmup) / (timer.end - timer.start)


def plain_steps_per_s(config, steps, warmup, device):
    torch.manual_seed(config.seed)
    model = EDMModule(config).to(device)  # the same networks, data and σ distribution
    denoiser, dataset, noise = model.denoiser, model.dataset.to(device), model.noise
    ema = EMA(denoiser, beta=config.ema.beta, power=config.ema.power, update_after_step=config.ema.update_after_step,
              update_every=config.ema.update_every, include_online_model=False, use_foreach=True)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas))
    generator = torch.Generator(device).manual_seed(0)
    n = config.trainer.batch_size
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        x0 = dataset.sample(n, generator=generator)
        sigma = noise.sample(n, generator=generator, device=device)
        loss, _ = edm_loss(denoiser, x0, sigma, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()
        ema.update()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return (steps - warmup) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--config', default='configs/toy/default.yaml')
    parser.add_argument('--steps', type=int, default=4000)
    parser.add_argument('--warmup', type=int, default=200)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    results = {'lightning': [], 'plain': []}
    for _ in range(args.repeats):
        results['plain'].append(plain_steps_per_s(config, args.steps, args.warmup, device))
        results['lightning'].append(lightning_steps_per_s(config, args.steps, args.warmup))
    best = {k: max(v) for k, v in results.items()}
    print(f'device {device}, threads {torch.get_num_threads()}, batch {config.trainer.batch_size}, '
          f'{args.steps - args.warmup} timed steps, best of {args.repeats}')
    print(f"hand-written loop: {best['plain']:8.1f} steps/s   (runs: {', '.join(f'{v:.1f}' for v in results['plain'])})")
    print(f"train.py loop:     {best['lightning']:8.1f} steps/s   (runs: {', '.join(f'{v:.1f}' for v in results['lightning'])})")
    print(f"ratio train.py / hand-written: {best['lightning'] / best['plain']:.3f}  (target >= 0.85)")


if __name__ == '__main__':
    main()
