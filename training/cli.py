"""Shared command-line plumbing: every user error is one line on stderr and exit code 2, found before
any heavy work.

Importing this module loads neither torch nor Lightning, so that the scripts answer --help and flag
errors at once: they parse and check their flags first and import the heavy parts after.
"""

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

# The names of sampling.SOLVERS, sampling.SCHEDULES and training.entropy.PROFILE_SCHEDULES, kept here
# so that --help needs no torch; tests/test_usage.py checks that they match the registries.
SOLVER_NAMES = ('ddim', 'dpmpp_2m', 'euler', 'euler_ancestral', 'heun')
SCHEDULE_NAMES = ('karras', 'loglinear', 'vp')
PROFILE_SCHEDULE_NAMES = ('entropic', 'rescaled-entropic', 'structure', 'rescaled-structure')

# The one-line errors of modules that import torch, by module: caught once the module is loaded
# (until then it cannot have raised its error), so that this module need not import them.
ONE_LINE_ERRORS = (('training.checkpoint', 'CheckpointError'), ('training.config', 'ConfigError'),
                   ('training.images', 'DataError'))


class UsageError(ValueError):
    """A bad command-line value, with a one-line message naming it."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason the user must act on (exit code 1)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _one_line_errors():
    loaded = (getattr(sys.modules[module], name, UsageError) for module, name in ONE_LINE_ERRORS if module in sys.modules)
    return (UsageError, *loaded)


def main_guard(main):
    """Run `main`, turning config, checkpoint, data and usage errors into one line and exit code 2, a run that
    stopped itself into one line and exit code 1, and Ctrl-C outside training into exit code 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        prog = sys.argv[0].rsplit('/', 1)[-1] or 'cedm'
        try:
            return main(*args, **kwargs)
        except _one_line_errors() as e:  # evaluated when an exception arrives: the modules loaded by then
            print(f'{prog}: error: {e}', file=sys.stderr)
            sys.exit(2)
        except RunStopped as e:
            print(f'{prog}: stopped: {e}', file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(f'{prog}: interrupted', file=sys.stderr)
            sys.exit(130)

    return wrapper


# ------------------------------------------------------------------------------------------------
# Checks of flag values that need no model: run them before importing torch or loading anything.

def check_device(device, flag='--device'):
    """UsageError unless `device` (None: the default) names a device of this machine. Imports torch."""
    if device is None:
        return
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag}: '{device}' is not a device (use cpu, cuda or cuda:N)") from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{flag}: cuda is not available on this machine (use {flag} cpu)')
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f'{flag}: {device}: this machine has {count} CUDA device(s) (use cuda:0 to cuda:{count - 1})')
    elif parsed.type == 'mps':
        if not torch.backends.mps.is_available():
            raise UsageError(f'{flag}: mps is not available on this machine (use {flag} cpu)')
    elif parsed.type != 'cpu':
        raise UsageError(f"{flag}: '{device}': cedm runs on cpu, cuda or mps")


def _writable(folder):
    """Whether a file can be created in `folder` (tried: permissions, read-only file systems, root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_creatable(path, flag, hint):
    """UsageError unless `path`, which does not exist, can be created: its nearest existing ancestor
    must be a folder that can be written to."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f'{flag}: cannot create {path}: {ancestor} is a file{hint}')
    if not _writable(ancestor):
        raise UsageError(f'{flag}: cannot create {path}: {ancestor} is not writable{hint}')


def check_output_folder(path, flag, hint=''):
    """UsageError unless folder `path` exists or can be created, and can be written to."""
    path = Path(path)
    if not path.exists():
        _check_creatable(path, flag, hint)
    elif not path.is_dir():
        raise UsageError(f'{flag}: {path} is a file, not a folder{hint}')
    elif not _writable(path):
        raise UsageError(f'{flag}: {path} is not writable{hint}')


def check_output_file(path, flag, hint=''):
    """UsageError unless file `path` can be written, its folder created if need be."""
    path = Path(path)
    if not path.exists():
        _check_creatable(path, flag, hint)
    elif path.is_dir():
        raise UsageError(f'{flag}: {path} is a folder (give a file name){hint}')
    elif not os.access(path, os.W_OK):
        raise UsageError(f'{flag}: {path} is not writable{hint}')


def check_checkpoint_path(path, flag='--ckpt'):
    """UsageError unless `path` is a file; for a run folder, names the checkpoint it holds."""
    text, path = str(path), Path(path)
    if text.startswith(('http://', 'https://')):
        raise UsageError(f'{flag}: {text}: give a local checkpoint file (URLs are not fetched)')
    if path.is_dir():
        for guess in (path / 'checkpoints' / 'last.ckpt', path / 'last.ckpt'):
            if guess.is_file():
                raise UsageError(f'{flag}: {path} is a folder (use {flag} {guess})')
        raise UsageError(f'{flag}: {path} is a folder, not a checkpoint file (e.g. RUN/checkpoints/last.ckpt)')
    if not path.is_file():
        raise UsageError(f'{flag}: {path}: checkpoint file not found')
    if path.suffix == '.pkl':
        raise UsageError(f'{flag}: {path}: an NVlabs/edm network pickle; cedm reads its own checkpoints '
                         '(RUN/checkpoints/last.ckpt)')


def add_sampler_args(parser):
    """Flags shared by sample.py and metrics.py; None means 'from the checkpoint's config'."""
    parser.add_argument('--ckpt', '--network', dest='ckpt', required=True,
                        help='checkpoint file (e.g. RUN/checkpoints/last.ckpt; --network: as in NVlabs/edm)')
    parser.add_argument('--num', type=int, help="number of samples (sample.py: the config's sample.num; metrics.py: 5000)")
    parser.add_argument('--steps', type=int, help='sampler steps (heun: 2*steps-1 denoiser calls)')
    parser.add_argument('--solver', choices=SOLVER_NAMES, help='ODE/SDE solver')
    parser.add_argument('--schedule', choices=SCHEDULE_NAMES + PROFILE_SCHEDULE_NAMES,
                        help=f"σ discretisation; {', '.join(PROFILE_SCHEDULE_NAMES)} use the checkpoint's profile")
    parser.add_argument('--estimate-profile', action='store_true',
                        help='re-estimate the entropy profile offline with the model itself on fresh data')
    parser.add_argument('--sigma-min', type=float)
    parser.add_argument('--sigma-max', type=float)
    parser.add_argument('--rho', type=float, help='karras schedule exponent (EDM: 7)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initial noise (default 0)')
    parser.add_argument('--no-ema', action='store_true', help='use the raw weights instead of the EMA')
    parser.add_argument('--posthoc-sigma-rel', type=float, metavar='SIGMA_REL',
                        help='use the post-hoc EMA of this relative width, reconstructed from the snapshots (ema.posthoc)')
    parser.add_argument('--device', help='cpu, cuda, cuda:1, ... (default: cuda if available)')


def check_sampler_args(args):
    """The checks of `add_sampler_args`'s flags that need neither torch nor the checkpoint."""
    for name in ('num', 'steps', 'sigma_min', 'sigma_max', 'rho'):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be > 0 (got {value})")
    if args.sigma_min is not None and args.sigma_max is not None and not args.sigma_min < args.sigma_max:
        raise UsageError(f'--sigma-min: must be below --sigma-max (got {args.sigma_min} >= {args.sigma_max})')
    sigma_rel = args.posthoc_sigma_rel
    if sigma_rel is not None:
        if args.no_ema:
            raise UsageError('--posthoc-sigma-rel and --no-ema: give one')
        if not 0 < sigma_rel < 0.28:
            raise UsageError(f'--posthoc-sigma-rel: must be in (0, 0.28) (got {sigma_rel})')
    check_checkpoint_path(args.ckpt)


# ------------------------------------------------------------------------------------------------
# Loading, and the checks that need the checkpoint's config.

def check_schedule(args, model):
    """UsageError unless the σ discretisation that the flags ask of `model` can be made: --sigma-min and
    --sigma-max, with the checkpoint's sample section for the one not given, must make a range."""
    s = model.config.sample
    schedule = getattr(args, 'schedule', None) or s.schedule
    given_min, given_max = getattr(args, 'sigma_min', None), getattr(args, 'sigma_max', None)
    if schedule != 'vp' and given_min is not None and given_max is None and not given_min < s.sigma_max:
        raise UsageError(f"--sigma-min: must be below the checkpoint's sample.sigma_max, {s.sigma_max} "
                         f"(got {given_min}; give --sigma-max too)")
    if schedule != 'vp' and given_max is not None and given_min is None and not s.sigma_min < given_max:
        raise UsageError(f"--sigma-max: must be above the checkpoint's sample.sigma_min, {s.sigma_min} "
                         f"(got {given_max}; give --sigma-min too)")
    try:
        model.sigmas(getattr(args, 'steps', None), schedule, given_min, given_max, getattr(args, 'rho', None))
    except ValueError as e:
        raise UsageError(f'--schedule {schedule}: {e}') from None


def load_for_sampling(args, check=None):
    """The checkpoint's model, its profile re-estimated offline if --estimate-profile was given.
    `check(model)`, if given, runs the caller's checks before those slower steps."""
    from .module import load_model  # local: the module imports Lightning, which `Parser` users may not need

    check_checkpoint_path(args.ckpt)
    model = load_model(args.ckpt, device=args.device)
    check_schedule(args, model)
    if check is not None:
        check(model)
    sigma_rel = getattr(args, 'posthoc_sigma_rel', None)  # checked by `check_sampler_args`
    if sigma_rel is not None:
        try:
            model.use_posthoc_ema(sigma_rel)
        except ValueError as e:
            raise UsageError(f'--posthoc-sigma-rel: {args.ckpt}: {e}') from None
    if args.estimate_profile:
        model.estimate_profile(use_ema=not args.no_ema, seed=args.seed)
    return model


def sample_kwargs(args):
    """The keyword arguments of `EDMModule.sample` that the flags set."""
    return dict(steps=args.steps, solver=args.solver, schedule=args.schedule, seed=args.seed,
                use_ema=not args.no_ema, sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho)
