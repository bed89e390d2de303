"""Shared command-line plumbing: every user error is one line on stderr and exit code 2."""

import argparse
import functools
import sys

from .checkpoint import CheckpointError
from .config import ConfigError
from .entropy import PROFILE_SCHEDULES
from .images import DataError


class UsageError(ValueError):
    """A bad command-line value, with a one-line message naming it."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason the user must act on (exit code 1)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def main_guard(main):
    """Run `main`, turning config, checkpoint, data and usage errors into one line and exit code 2, a run that
    stopped itself into one line and exit code 1, and Ctrl-C outside training into exit code 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        prog = sys.argv[0].rsplit('/', 1)[-1] or 'cedm'
        try:
            return main(*args, **kwargs)
        except (ConfigError, CheckpointError, DataError, UsageError) as e:
            print(f'{prog}: error: {e}', file=sys.stderr)
            sys.exit(2)
        except RunStopped as e:
            print(f'{prog}: stopped: {e}', file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(f'{prog}: interrupted', file=sys.stderr)
            sys.exit(130)

    return wrapper


def add_sampler_args(parser):
    """Flags shared by sample.py and metrics.py; None means 'from the checkpoint's config'."""
    import sampling  # local: keeps `training.cli` importable without the sampling package loaded

    parser.add_argument('--ckpt', required=True, help='checkpoint file (e.g. RUN/checkpoints/last.ckpt)')
    parser.add_argument('--num', type=int, help="number of samples (sample.py: the config's sample.num; metrics.py: 5000)")
    parser.add_argument('--steps', type=int, help='sampler steps (heun: 2*steps-1 denoiser calls)')
    parser.add_argument('--solver', choices=sorted(sampling.SOLVERS), help='ODE/SDE solver')
    parser.add_argument('--schedule', choices=sorted(sampling.SCHEDULES) + list(PROFILE_SCHEDULES),
                        help=f"σ discretisation; {', '.join(PROFILE_SCHEDULES)} use the checkpoint's profile")
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
    for name in ('num', 'steps', 'sigma_min', 'sigma_max', 'rho'):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be > 0 (got {value})")


def load_for_sampling(args):
    """The checkpoint's model, its profile re-estimated offline if --estimate-profile was given."""
    from .module import load_model  # local: the module imports Lightning, which `Parser` users may not need

    model = load_model(args.ckpt, device=args.device)
    sigma_rel = getattr(args, 'posthoc_sigma_rel', None)
    if sigma_rel is not None:
        if args.no_ema:
            raise UsageError('--posthoc-sigma-rel and --no-ema: give one')
        if not 0 < sigma_rel < 0.28:
            raise UsageError(f'--posthoc-sigma-rel: must be in (0, 0.28) (got {sigma_rel})')
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
