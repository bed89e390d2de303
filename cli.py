"""Shared command-line plumbing: every user error is one line on stderr and exit code 2, found before
any heavy work.

Importing this module loads neither torch nor Lightning, so that the scripts answer --help and flag
errors at once: they parse and check their flags first and import the heavy parts after.
"""

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

from errors import CheckpointError, ConfigError, DataError, FidelityError, RunStopped, UsageError

# The names of sampling.SOLVERS, sampling.SCHEDULES, entropy.profile.PROFILE_SCHEDULES, the surrogate schedule and
# sampling.OPTIMIZED_SCHEDULES, kept here so that --help needs no torch;
# tests/test_usage.py checks that they match the registries.
SOLVER_NAMES = ('ddim', 'dpmpp_2m', 'euler', 'euler_ancestral', 'heun')
SCHEDULE_NAMES = ('karras', 'loglinear', 'vp')
PROFILE_SCHEDULE_NAMES = ('entropic', 'rescaled-entropic', 'structure', 'rescaled-structure')
SURROGATE_SCHEDULE_NAME = 'surrogate'
OPTIMIZED_SCHEDULE_NAMES = ('optimized', 'optimized-entropic')



class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def is_first_process():
    """Whether this is the job's first process (global rank 0): the only one under torchrun, Lightning's
    launcher or SLURM that prints user errors and touches a run folder before training starts."""
    return all(int(os.environ.get(name) or 0) == 0 for name in ('RANK', 'LOCAL_RANK', 'NODE_RANK', 'SLURM_PROCID'))


def main_guard(main):
    """Run `main`, turning config, checkpoint, data and usage errors into one line and exit code 2 (in a
    multi-process job every process exits 2; config and usage errors, the same in every process, are
    printed by the first alone, the errors of files that may differ between nodes by each), a run that
    stopped itself into one line and exit code 1, and Ctrl-C outside training into exit code 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        prog = sys.argv[0].rsplit('/', 1)[-1] or 'cedm'
        try:
            return main(*args, **kwargs)
        except (CheckpointError, ConfigError, DataError, FidelityError, UsageError) as e:
            if is_first_process():
                print(f'{prog}: error: {e}', file=sys.stderr)
            elif not isinstance(e, (ConfigError, UsageError)):  # files can differ between nodes: say which rank
                print(f"{prog}: error (rank {os.environ.get('RANK', '?')}): {e}", file=sys.stderr)
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
    """The device to run on, a torch.device: `device`, where None and a bare 'cuda' name this process's GPU
    (`sampling_model.process_device`: cuda:LOCAL_RANK under torchrun); UsageError unless it is a device of
    this machine. Imports torch."""
    import torch

    from sampling_model import process_device
    try:
        parsed = process_device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag}: '{device}' is not a device (use cpu, cuda or cuda:N)") from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{flag}: cuda is not available on this machine (use {flag} cpu)')
        count = torch.cuda.device_count()
        # Checked against torchrun's processes per node, not this one's LOCAL_RANK alone: the first process,
        # which prints the error, fails too.
        processes = max(parsed.index + 1, int(os.environ.get('LOCAL_WORLD_SIZE', 1)))
        if str(parsed) != device and processes > count:  # the index is torchrun's LOCAL_RANK
            raise UsageError(f'{flag}: {processes} processes on this machine\'s {count} CUDA device(s), one each by '
                             f'LOCAL_RANK: start at most {count} per node, or give {flag} cuda:N')
        if parsed.index >= count:
            raise UsageError(f'{flag}: {device}: this machine has {count} CUDA device(s) (use cuda:0 to cuda:{count - 1})')
    elif parsed.type == 'mps':
        if not torch.backends.mps.is_available():
            raise UsageError(f'{flag}: mps is not available on this machine (use {flag} cpu)')
    elif parsed.type != 'cpu':
        raise UsageError(f"{flag}: '{device}': cedm runs on cpu, cuda or mps")
    return parsed


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


def output_path(out, ckpt, default_name, check):
    """`--out` checked by `check` (check_output_file or check_output_folder); without it, RUN/default_name
    beside the checkpoint's folder."""
    if out is not None:
        check(Path(out), '--out')
        return Path(out)
    default = Path(ckpt).resolve().parent.parent / default_name
    check(default, '--out', hint=f" (the default next to the checkpoint; give --out {'DIR' if check is check_output_folder else 'FILE'})")
    return default


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
    parser.add_argument('--schedule', choices=SCHEDULE_NAMES + PROFILE_SCHEDULE_NAMES + (SURROGATE_SCHEDULE_NAME,)
                        + OPTIMIZED_SCHEDULE_NAMES,
                        help=f"σ discretisation; {', '.join(PROFILE_SCHEDULE_NAMES)} and {SURROGATE_SCHEDULE_NAME} use "
                             f"the checkpoint's profile ({SURROGATE_SCHEDULE_NAME}: fitted to --solver; entropic and "
                             "structure: broken on images, far worse than karras with every solver on MNIST; see the README); "
                             "optimized: fitted to the model and --solver from its own trajectories (GITS; computed once, "
                             "cached beside the checkpoint), optimized-entropic: the same weighted by the profile")
    parser.add_argument('--estimate-profile', action='store_true',
                        help='re-estimate the entropy profile offline with the model itself on fresh data')
    parser.add_argument('--sigma-min', type=float)
    parser.add_argument('--sigma-max', type=float)
    parser.add_argument('--rho', type=float, help='karras schedule exponent (EDM: 7)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initial noise (default 0)')
    parser.add_argument('--no-ema', action='store_true', help='use the raw weights instead of the EMA')
    parser.add_argument('--posthoc-sigma-rel', type=float, metavar='SIGMA_REL',
                        help='use the post-hoc EMA of this relative width, reconstructed from the snapshots (ema.posthoc)')
    parser.add_argument('--device', help='cpu, cuda, cuda:1, ... (default: cuda:LOCAL_RANK if available, so each torchrun process its own GPU)')


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
        if schedule in OPTIMIZED_SCHEDULE_NAMES:  # the schedule itself is slow: only what would stop it
            check_optimized_schedule(getattr(args, 'solver', None) or s.solver, getattr(args, 'steps', None) or s.steps,
                                     given_min or s.sigma_min, given_max or s.sigma_max)
        else:
            model.sigmas(getattr(args, 'steps', None), schedule, given_min, given_max, getattr(args, 'rho', None))
    except ValueError as e:
        raise UsageError(f'--schedule {schedule}: {e}') from None


def check_optimized_schedule(solver, steps, sigma_min, sigma_max):
    """ValueError unless an optimised schedule of `steps` steps for `solver` can be made on its grid."""
    from sampling.optimized import GRID_SIZE, check_solver, grid_sigmas

    check_solver(solver)
    if not 1 <= steps <= GRID_SIZE:
        raise ValueError(f'--steps: its grid has {GRID_SIZE} levels, room for 1 to {GRID_SIZE} steps (got {steps})')
    grid_sigmas(sigma_min, sigma_max)


def load_for_sampling(args, check=None):
    """The checkpoint's model, its profile re-estimated offline if --estimate-profile was given.
    `check(model)`, if given, runs the caller's checks before those slower steps."""
    from sampling_model import load_model

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


# ------------------------------------------------------------------------------------------------
# The image-metric flags of fid.py and sample.py --fid.

# evaluation.fidelity.METRICS, here so that the flags are checked before torch is imported (tests/test_usage.py).
METRICS = ('fid', 'kid', 'isc', 'prc')
# sample.py's per-seed images (000042.png ...), not the grid beside them: what evaluation.fidelity reads.
IMAGE_PATTERN = '[0-9]*.png'


def add_metric_args(parser):
    """The metric flags, shared with `sample.py --fid`; returns their argparse actions."""
    return [
        parser.add_argument('--metrics', default='fid,kid', help='comma-separated: fid, kid, isc, prc (default fid,kid)'),
        parser.add_argument('--features', choices=('inception', 'classifier', 'autoencoder'), default='inception'),
        parser.add_argument('--fid-weights', help="Inception weights file (default: torch-fidelity's cache)"),
        parser.add_argument('--classifier', help='digit classifier file (default: trained once into --cache-dir)'),
        parser.add_argument('--autoencoder', help='digit autoencoder file (default: trained once into --cache-dir)'),
        parser.add_argument('--num-reference', type=int, help='a fixed random subset of N training images (default all)'),
        parser.add_argument('--cache-dir', default=str(Path.home() / '.cache' / 'cedm'),
                            help='reference statistics, the classifier and the autoencoder (default ~/.cache/cedm)'),
        parser.add_argument('--json', help='also write the results to this JSON file'),
    ]


def check_metric_args(args):
    """The checks of the metric flags that need neither torch nor the data."""
    if args.num_reference is not None and args.num_reference < 2:
        raise UsageError(f'--num-reference: must be >= 2 (got {args.num_reference})')
    unknown = sorted(set(_metrics(args)) - set(METRICS))
    if unknown:
        raise UsageError(f"--metrics: unknown {', '.join(unknown)} (allowed: {', '.join(METRICS)})")
    for flag, path in (('--fid-weights', args.fid_weights), ('--classifier', args.classifier),
                       ('--autoencoder', args.autoencoder)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f'{flag}: {path}: file not found')
    if args.json is not None:
        check_output_file(args.json, '--json')
    check_output_folder(args.cache_dir, '--cache-dir')


def check_data(args, data):
    """UsageError unless the metrics can be computed on `data` (a dataset of `datasets.build_dataset`)."""
    if len(data.shape) != 3:
        raise UsageError(f"data.name '{data.name}': not image data")
    if args.features in ('classifier', 'autoencoder') and not data.name.startswith('mnist'):
        raise UsageError(f"--features {args.features}: digits only (data.name is '{data.name}')")


def _metrics(args):
    return [m.strip() for m in args.metrics.split(',')]


def compute(args, images, data, device):
    """Print (and with --json write) the metrics of the PNGs in `images` against the training images
    of `data` (a dataset of `datasets.build_dataset`)."""
    import torch

    from evaluation import fidelity  # torch-fidelity is needed here only

    check_data(args, data)
    weights = args.fid_weights
    if args.features == 'classifier':
        if args.classifier:
            weights = Path(args.classifier)
        else:
            weights, accuracy = fidelity.cached_classifier(data, args.cache_dir, quiet=getattr(args, 'quiet', False))
            if accuracy is not None:
                print(f'fid: trained the digit classifier on {data.name}: held-out accuracy {accuracy:.3f}; saved {weights}')
    elif args.features == 'autoencoder':
        from evaluation import digit_features
        weights, rmse = ((Path(args.autoencoder), None) if args.autoencoder else
                         digit_features.cached_autoencoder(data, args.cache_dir, quiet=getattr(args, 'quiet', False)))
        if rmse is not None:
            print(f'fid: trained the digit autoencoder on {data.name}: held-out RMSE {rmse:.3f}; saved {weights}')
    num_images = len(list(Path(images).glob(IMAGE_PATTERN)))
    num_reference = len(data.images) if args.num_reference is None else min(args.num_reference, len(data.images))
    # A classifier's distances compare only with its own: the line names its weights, not just its file.
    features = (f'digit {args.features} {Path(weights).name} (weights {fidelity.classifier_fingerprint(weights)})'
                if args.features != 'inception' else 'Inception-v3')
    print(f'fid: {num_images} images in {images} against {num_reference} {data.name} training images, {features} features')
    cuda = torch.device(device).type == 'cuda'
    try:  # torch-fidelity moves its work to the current CUDA device: `device`'s, for the duration
        with feature_progress(getattr(args, 'quiet', False)), torch.cuda.device(device) if cuda else contextlib.nullcontext():
            result = fidelity.image_metrics(images, data, metrics=_metrics(args), features=args.features,
                                            weights=weights, cache_root=args.cache_dir, num_reference=args.num_reference,
                                            cuda=cuda)
    except fidelity.FidelityError as e:
        raise UsageError(str(e)) from None
    if args.features != 'inception':  # torch-fidelity names its numbers for Inception features
        result = {name.replace('inception', args.features): value for name, value in result.items()}
    if data.name.startswith('mnist'):  # what a network's features may miss: noise on the background, blur
        from evaluation.pixel_stats import folder_pixel_metrics
        result.update(folder_pixel_metrics(images, data))
    for name, value in result.items():
        print(f'{name:36s} {value:.6g}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


@contextlib.contextmanager
def feature_progress(quiet):
    """torch-fidelity's own progress bar over the images it computes features of, in images per second,
    without its verbose messages (which name every metric for Inception features): its module's `tqdm`,
    replaced for the duration."""
    import torch_fidelity.utils
    from tqdm import tqdm

    def bar(*args, disable=True, leave=False, unit=None, desc=None, **kwargs):
        return tqdm(*args, disable=quiet, leave=True, unit='img', desc='fid: features', dynamic_ncols=True, **kwargs)

    original = getattr(torch_fidelity.utils, 'tqdm', None)
    if original is None:  # another torch-fidelity: no bar
        yield
        return
    torch_fidelity.utils.tqdm = bar
    try:
        yield
    finally:
        torch_fidelity.utils.tqdm = original
