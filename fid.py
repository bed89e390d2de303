"""FID and friends between generated images and the training images (torch-fidelity).

    python fid.py --images DIR (--ckpt RUN/checkpoints/last.ckpt | --config FILE) [--metrics fid,kid]
                  [--features inception|classifier] [--fid-weights PATH] [--classifier PATH]
                  [--num-reference N] [--cache-dir DIR] [--json FILE] [--device cuda] [--quiet]

DIR holds PNGs, e.g. from `python sample.py --ckpt ... --seeds 0-49999 --out DIR`. The reference is
the training set of the checkpoint's (or the config's) data section. --metrics: any of fid, kid,
isc (Inception Score), prc (precision/recall). Inception weights come from torch-fidelity's cache or
--fid-weights. --features classifier (digits) uses a small classifier trained once on the real
digits and cached as DIR_CACHE/classifier-<data>-<px>.pt (its held-out accuracy is printed), so
MNIST runs are measurable with no Inception weights; its distances compare only with each other and
are named for it (frechet_classifier_distance, kernel_classifier_distance_mean, ...).
A first line names the images, the reference set and the features; a progress bar on stderr counts
the images whose features are computed, per second (none with --quiet).
"""

import contextlib
import json
from pathlib import Path

from training.cli import (Parser, UsageError, check_checkpoint_path, check_device, check_output_file,
                          check_output_folder, main_guard)

# training.fidelity.METRICS, here so that the flags are checked before torch is imported (tests/test_usage.py).
METRICS = ('fid', 'kid', 'isc', 'prc')
# sample.py's per-seed images (000042.png ...), not the grid beside them: what training.fidelity reads.
IMAGE_PATTERN = '[0-9]*.png'


@main_guard
def main(argv=None):
    parser = Parser(description='FID and friends of generated images against the training images.')
    parser.add_argument('--images', required=True, help='folder of generated PNGs')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--ckpt', '--network', dest='ckpt', help="checkpoint whose data section gives the reference images")
    source.add_argument('--config', help='YAML config whose data section gives the reference images')
    add_metric_args(parser)
    parser.add_argument('--device', default='cpu', help="cpu or cuda (default cpu)")
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    images = Path(args.images)
    if not images.is_dir():
        raise UsageError(f'--images: {images}: ' + ('a file, not a folder' if images.exists() else 'no such folder'))
    if args.ckpt:
        check_checkpoint_path(args.ckpt)
    check_metric_args(args)
    check_device(args.device)

    from training.checkpoint import read_checkpoint
    from training.config import load_config
    from training.data import build_dataset
    config = read_checkpoint(args.ckpt)[1] if args.ckpt else load_config(args.config)
    data = build_dataset(config.data)
    check_data(args, data)
    compute(args, args.images, data, args.device)


def add_metric_args(parser):
    """The metric flags, shared with `sample.py --fid`; returns their argparse actions."""
    return [
        parser.add_argument('--metrics', default='fid,kid', help='comma-separated: fid, kid, isc, prc (default fid,kid)'),
        parser.add_argument('--features', choices=('inception', 'classifier'), default='inception'),
        parser.add_argument('--fid-weights', help="Inception weights file (default: torch-fidelity's cache)"),
        parser.add_argument('--classifier', help='digit classifier file (default: trained once into --cache-dir)'),
        parser.add_argument('--num-reference', type=int, help='a fixed random subset of N training images (default all)'),
        parser.add_argument('--cache-dir', default=str(Path.home() / '.cache' / 'cedm'),
                            help='reference statistics and the classifier (default ~/.cache/cedm)'),
        parser.add_argument('--json', help='also write the results to this JSON file'),
    ]


def check_metric_args(args):
    """The checks of the metric flags that need neither torch nor the data."""
    if args.num_reference is not None and args.num_reference < 2:
        raise UsageError(f'--num-reference: must be >= 2 (got {args.num_reference})')
    unknown = sorted(set(_metrics(args)) - set(METRICS))
    if unknown:
        raise UsageError(f"--metrics: unknown {', '.join(unknown)} (allowed: {', '.join(METRICS)})")
    for flag, path in (('--fid-weights', args.fid_weights), ('--classifier', args.classifier)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f'{flag}: {path}: file not found')
    if args.json is not None:
        check_output_file(args.json, '--json')
    check_output_folder(args.cache_dir, '--cache-dir')


def check_data(args, data):
    """UsageError unless the metrics can be computed on `data` (a dataset of `training.data.build_dataset`)."""
    if len(data.shape) != 3:
        raise UsageError(f"data.name '{data.name}': not image data")
    if args.features == 'classifier' and not data.name.startswith('mnist'):
        raise UsageError(f"--features classifier: digits only (data.name is '{data.name}')")


def _metrics(args):
    return [m.strip() for m in args.metrics.split(',')]


def compute(args, images, data, device):
    """Print (and with --json write) the metrics of the PNGs in `images` against the training images
    of `data` (a dataset of `training.data.build_dataset`)."""
    from training import fidelity  # torch-fidelity is needed here only

    check_data(args, data)
    weights = args.fid_weights
    if args.features == 'classifier':
        if args.classifier:
            weights = Path(args.classifier)
        else:
            weights, accuracy = fidelity.cached_classifier(data, args.cache_dir)
            if accuracy is not None:
                print(f'fid: trained the digit classifier on {data.name}: held-out accuracy {accuracy:.3f}; saved {weights}')
    num_images = len(list(Path(images).glob(IMAGE_PATTERN)))
    num_reference = len(data.images) if args.num_reference is None else min(args.num_reference, len(data.images))
    features = f'digit classifier {Path(weights).name}' if args.features == 'classifier' else 'Inception-v3'
    print(f'fid: {num_images} images in {images} against {num_reference} {data.name} training images, {features} features')
    try:
        with feature_progress(getattr(args, 'quiet', False)):
            result = fidelity.image_metrics(images, data, metrics=_metrics(args), features=args.features,
                                            weights=weights, cache_root=args.cache_dir, num_reference=args.num_reference,
                                            cuda=str(device).startswith('cuda'))
    except fidelity.FidelityError as e:
        raise UsageError(str(e)) from None
    if args.features != 'inception':  # torch-fidelity names its numbers for Inception features
        result = {name.replace('inception', args.features): value for name, value in result.items()}
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


if __name__ == '__main__':
    main()
