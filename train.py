"""Train an EDM denoiser.

    python train.py [--config FILE] [--resume PATH|auto [--allow-change KEY,...] | --restart] [key=value ...]

With no arguments it trains the built-in default, configs/toy/default.yaml. Overrides are dotted
keys with YAML values (`data.name=moons`, `trainer.max_steps=2000`, `data.weights=[0.3,0.7]`).
A run_dir that holds a run is never written over: continue it with --resume, or start it over with
--restart (the old run is moved aside, not deleted).
Resuming takes the config stored in the checkpoint (overrides still apply) unless --config is given; it
may change how the run executes, logs and checkpoints (trainer.* but batch_size, sample.*, data.root),
not what it trains (data, network, preconditioning, σ distribution, optimiser, EMA) unless
--allow-change names the keys.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from cli import Parser, UsageError, check_checkpoint_path, check_output_folder, is_first_process, main_guard
from training.run_folder import check_run_folder

DEFAULT_CONFIG = 'configs/toy/default.yaml'
CONFIG_HELP = '''config keys (key=value, dotted; YAML values), by section:
  name, seed, run_dir, data.*, network.*, precond.*, noise.*, optim.*, ema.*, trainer.*, sample.*
  every key with its type and default: docs/config-help.txt; examples: configs/*/*.yaml
  e.g. python train.py data.name=moons trainer.max_steps=2000 run_dir=runs/moons'''


def resolve_config(args):
    """The validated config, the checkpoint to resume from (None: a fresh run) and its contents (read once)."""
    from checkpoint_file import read_checkpoint
    from config import ConfigError, config_from_dict, config_to_dict, merge, parse_overrides, read_config_file

    if len(args.config or ()) > 1:
        raise UsageError(f"--config: given {len(args.config)} times ({', '.join(args.config)}); give one")
    config_file = args.config[0] if args.config else None
    overrides = parse_overrides(args.overrides)
    resume = args.resume or overrides.pop('resume', None)
    auto = resume == 'auto'
    if args.restart and resume is not None:
        raise UsageError('--restart and --resume: give one (--restart starts run_dir over, --resume continues it)')
    if auto:
        run_dir = overrides.get('run_dir') or (config_file and read_config_file(config_file).get('run_dir'))
        if not run_dir:
            raise UsageError("resume=auto needs run_dir=PATH to know where to look for checkpoints/last.ckpt")
        last = Path(run_dir) / 'checkpoints' / 'last.ckpt'
        resume = str(last) if last.is_file() else None
    elif resume is not None:
        check_checkpoint_path(resume, '--resume')
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
    changes = check_resume_changes(stored, config, args.allow_change, resume)
    step = checkpoint['global_step'] if checkpoint else 0
    if resume is not None and step >= config.trainer.max_steps and not _finished_run(config, resume, step):
        raise ConfigError(f'trainer.max_steps: {config.trainer.max_steps} is not beyond step {step} of {resume}: '
                          'nothing to train (give a larger trainer.max_steps)')
    check_output_folder(config.run_dir, 'run_dir')
    if is_first_process():
        check_run_folder(config.run_dir, resume, auto, args.restart)
    check_accelerator(config.trainer)
    return config, resume, checkpoint, changes


def check_resume_changes(stored, config, allowed, resume):
    """The changes `config` makes to the resumed run's config `stored` among the keys a resume may not change
    (config.resumable), all named by --allow-change; ConfigError naming the others."""
    from config import ConfigError, config_changes, flat_config, resumable

    allowed = [key.strip() for text in allowed or () for key in text.split(',') if key.strip()]
    keys = flat_config(config)
    unknown = [key for key in allowed if key not in keys]
    if unknown:
        raise UsageError(f"--allow-change: {unknown[0]} is not a config key (e.g. network.width, optim.lr)")
    if stored is None:
        if allowed:
            raise UsageError('--allow-change: only with --resume (a fresh run has nothing to change)')
        return []
    changes = [change for change in config_changes(stored, config) if not resumable(change[0])]
    refused = [change for change in changes if change[0] not in allowed]
    if refused:
        named = '; '.join(f'{key}: {old!r} -> {new!r}' for key, old, new in refused)
        raise ConfigError(f"--resume {resume}: would change the run's {named} (these keys define the model and its "
                          f"training: start a new run_dir, or allow it with --allow-change {','.join(k for k, _, _ in refused)})")
    return changes


def _finished_run(config, resume, step):
    """Whether `resume` is the last.ckpt of config.run_dir at exactly max_steps: the run is complete, and
    `--resume auto` (a requeued job, the same command again) says so instead of failing."""
    last = Path(config.run_dir) / 'checkpoints' / 'last.ckpt'
    return step == config.trainer.max_steps and last.exists() and Path(resume).resolve() == last.resolve()


def check_accelerator(trainer_config):
    """UsageError unless the machine has the devices `trainer.accelerator` and `trainer.devices` ask for; a
    warning when CPU processes outnumber the cores."""
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
    elif t.accelerator == 'cpu' or (t.accelerator == 'auto' and not torch.cuda.is_available()):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        if t.devices > cores and is_first_process():  # allowed (DDP tried on a laptop), but never faster
            print(f'cedm: warning: trainer.devices={t.devices} starts {t.devices} training processes on this '
                  f'machine\'s {cores} CPU cores; they share them and run slower than one', file=sys.stderr)


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
    from training.module import is_distributed
    from training.shutdown import GracefulShutdown

    t = config.trainer
    callbacks = [Checkpoints(run_dir / 'checkpoints', t.ckpt_every, t.keep_last, t.keep_every), GracefulShutdown()]
    if t.progress_bar:
        callbacks.append(ProgressBar())
    strategy = DDPStrategy(timeout=timedelta(seconds=t.collective_timeout)) if is_distributed(t) else 'auto'
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
    parser.add_argument('--restart', action='store_true',
                        help='start run_dir over when it holds a run: the old run is moved aside to '
                             'RUN_DIR-replaced-<time>, not deleted (without it, such a run_dir is refused)')
    parser.add_argument('--allow-change', action='append', metavar='KEY[,KEY]',
                        help='with --resume: let these keys that define the model or its training (data.*, '
                             'network.*, optim.*, ...) change; recorded in RUN/resume-changes.yaml')
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides (below)')
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the flags
    config, resume, checkpoint, changes = resolve_config(args)
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

        from checkpoint_file import remove_stale_temporaries
        from config import config_to_dict
        from training.run_folder import move_aside, record_resume_changes, run_entries
        if args.restart and run_entries(run_dir):
            print(f'cedm: --restart: moved the run in {run_dir} to {move_aside(run_dir)}')
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir / 'checkpoints')
        if changes:
            record = record_resume_changes(run_dir, checkpoint['global_step'], resume, changes)
            print(f"cedm: resuming with {', '.join(f'{k}: {old!r} -> {new!r}' for k, old, new in changes)} "
                  f'(--allow-change; recorded in {record})')
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
