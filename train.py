"""Train an EDM denoiser.

    python train.py [--config FILE] [--resume PATH|auto] [key=value ...]

With no arguments it trains the built-in default, configs/toy/default.yaml. Overrides are dotted
keys with YAML values (`data.name=moons`, `trainer.max_steps=2000`, `data.weights=[0.3,0.7]`).
Resuming takes the config stored in the checkpoint (overrides still apply) unless --config is given.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from cli import Parser, UsageError, check_output_folder, main_guard

DEFAULT_CONFIG = 'configs/toy/default.yaml'
CONFIG_HELP = '''config keys (key=value, dotted; YAML values), by section:
  name, seed, run_dir, data.*, network.*, precond.*, noise.*, optim.*, ema.*, trainer.*, sample.*
  every key with its type and default: docs/config-help.txt; examples: configs/*/*.yaml
  e.g. python train.py data.name=moons trainer.max_steps=2000 run_dir=runs/moons'''


def resolve_config(args):
    """The validated config, the checkpoint to resume from (None: a fresh run) and its contents (read once)."""
    from training.checkpoint import read_checkpoint
    from training.config import ConfigError, config_from_dict, config_to_dict, merge, parse_overrides, read_config_file

    if len(args.config or ()) > 1:
        raise UsageError(f"--config: given {len(args.config)} times ({', '.join(args.config)}); give one")
    config_file = args.config[0] if args.config else None
    overrides = parse_overrides(args.overrides)
    resume = args.resume or overrides.pop('resume', None)
    if resume == 'auto':
        run_dir = overrides.get('run_dir') or (config_file and read_config_file(config_file).get('run_dir'))
        if not run_dir:
            raise UsageError("resume=auto needs run_dir=PATH to know where to look for checkpoints/last.ckpt")
        last = Path(run_dir) / 'checkpoints' / 'last.ckpt'
        resume = str(last) if last.is_file() else None
    checkpoint, stored = read_checkpoint(resume) if resume is not None else (None, None)
    if stored is not None and not config_file:
        base = config_to_dict(stored)  # continue with the run's own config
    else:
        base = read_config_file(config_file or DEFAULT_CONFIG)
        if 'name' in overrides.get('data', {}) and 'name' not in overrides:
            overrides['name'] = overrides['data']['name']  # runs/moons-..., not the config file's name
    config = config_from_dict(merge(base, overrides))
    if config.run_dir is None:
        config.run_dir = default_run_dir(config)
    config.resume = resume
    step = checkpoint['global_step'] if checkpoint else 0
    if resume is not None and step >= config.trainer.max_steps and not _finished_run(config, resume, step):
        raise ConfigError(f'trainer.max_steps: {config.trainer.max_steps} is not beyond step {step} of {resume}: '
                          'nothing to train (give a larger trainer.max_steps)')
    check_output_folder(config.run_dir, 'run_dir')
    check_accelerator(config.trainer)
    return config, resume, checkpoint


def _finished_run(config, resume, step):
    """Whether `resume` is the last.ckpt of config.run_dir at exactly max_steps: the run is complete, and
    `--resume auto` (a requeued job, the same command again) says so instead of failing."""
    last = Path(config.run_dir) / 'checkpoints' / 'last.ckpt'
    return step == config.trainer.max_steps and last.exists() and Path(resume).resolve() == last.resolve()


def check_accelerator(trainer_config):
    """UsageError unless the machine has the devices `trainer.accelerator` and `trainer.devices` ask for."""
    import torch
    t = trainer_config
    if t.accelerator in ('gpu', 'cuda'):
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError(f'trainer.accelerator: {t.accelerator}, but this machine has no CUDA device '
                             '(use trainer.accelerator=cpu, or auto)')
        if t.devices > count:
            raise UsageError(f'trainer.devices: {t.devices}, but this machine has {count} CUDA device(s)')
    elif t.accelerator == 'mps' and not torch.backends.mps.is_available():
        raise UsageError('trainer.accelerator: mps is not available on this machine (use trainer.accelerator=cpu, or auto)')


def default_run_dir(config):
    """runs/<name>-<timestamp>, the same on every rank: Lightning's launcher starts the other ranks
    from this process, which hands its choice down through the environment; under torchrun the
    ranks start apart, so there it must be given."""
    if 'CEDM_RUN_DIR' not in os.environ:
        if int(os.environ.get('WORLD_SIZE', 1)) > 1:
            raise UsageError('run_dir: give run_dir=PATH when launching with torchrun (every rank must write to one folder)')
        os.environ['CEDM_RUN_DIR'] = f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return os.environ['CEDM_RUN_DIR']


def build_trainer(config, run_dir, checkpoint=None):
    """The Trainer of a run; `checkpoint`, the contents of `config.resume` already read, is not read again."""
    from datetime import timedelta

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy

    from training.callbacks import AtomicCheckpointIO, Checkpoints, ProgressBar
    from training.shutdown import GracefulShutdown

    t = config.trainer
    callbacks = [Checkpoints(run_dir / 'checkpoints', t.ckpt_every), GracefulShutdown()]
    if t.progress_bar:
        callbacks.append(ProgressBar(refresh_rate=t.log_every))
    distributed = t.devices * t.num_nodes > 1 or int(os.environ.get('WORLD_SIZE', 1)) > 1
    strategy = DDPStrategy(timeout=timedelta(seconds=t.collective_timeout)) if distributed else 'auto'
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy, precision=t.precision, default_root_dir=run_dir,
        logger=TensorBoardLogger(run_dir, name='tensorboard', version=''), callbacks=callbacks,
        enable_checkpointing=False,  # Lightning's ModelCheckpoint: `Checkpoints` writes instead
        plugins=[AtomicCheckpointIO({config.resume: checkpoint} if checkpoint else None)], enable_progress_bar=t.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)


@main_guard
def main(argv=None):
    parser = Parser(description=__doc__.split('\n')[1].strip(), epilog=CONFIG_HELP,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', action='append', help=f'YAML experiment (default {DEFAULT_CONFIG})')
    parser.add_argument('--resume', help="checkpoint to continue from, or 'auto' for run_dir's last.ckpt")
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides (below)')
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the flags
    config, resume, checkpoint = resolve_config(args)
    run_dir = Path(config.run_dir)
    last = run_dir / 'checkpoints' / 'last.ckpt'
    if checkpoint and checkpoint['global_step'] == config.trainer.max_steps:
        # A finished run resumed (`_finished_run`): Lightning would return at once, calling no hook.
        if int(os.environ.get('RANK', 0)) == 0:
            print(f'cedm: done at step {config.trainer.max_steps}; checkpoint {last}')
        return

    import lightning as L

    from training.module import EDMModule, batch_split
    L.seed_everything(config.seed, verbose=False)  # network initialisation; torch, numpy and Python streams
    model = EDMModule(config, spectrum=checkpoint is None)  # a checkpoint brings its spectrum
    if checkpoint:
        model.check_checkpoint(resume, checkpoint)  # one line, before anything is written, for one that does not fit
    trainer = build_trainer(config, run_dir, checkpoint)
    batch_split(config.trainer, trainer.world_size)  # a batch that does not split stops here, before writing
    if trainer.is_global_zero:
        import yaml

        from training.checkpoint import remove_stale_temporaries
        from training.config import config_to_dict
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir / 'checkpoints')
        (run_dir / 'config.yaml').write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        num_params = sum(p.numel() for p in model.denoiser.parameters())
        print(f'cedm: {config.name}: {num_params:,} parameters; run directory {run_dir}'
              + (f'; resuming from {resume}' if resume else ''))
    trainer.fit(model, ckpt_path=resume)
    shutdown = next(c for c in trainer.callbacks if hasattr(c, 'stopped_at'))  # training.shutdown.GracefulShutdown
    if shutdown.stopped_at is not None:
        if trainer.is_global_zero:
            print(f'cedm: stopped by {shutdown.received.name} at step {shutdown.stopped_at}; checkpoint {last}; '
                  f'resume with: python train.py --resume auto run_dir={run_dir}', file=sys.stderr)
            if shutdown.requeued is not None:
                print(f"cedm: SLURM job {os.environ['SLURM_JOB_ID']} "
                      + ('requeued' if shutdown.requeued else 'NOT requeued (scontrol requeue failed)'), file=sys.stderr)
        sys.exit(128 + shutdown.received)  # the shell's convention for a process ended by a signal
    if trainer.is_global_zero:
        print(f'cedm: done at step {trainer.global_step}; checkpoint {last}')


if __name__ == '__main__':
    main()
