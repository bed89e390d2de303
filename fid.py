"""FID and friends between generated images and the training images (torch-fidelity).

    python fid.py --images DIR (--ckpt RUN/checkpoints/last.ckpt | --config FILE) [--metrics fid,kid]
                  [--features inception|classifier] [--fid-weights PATH] [--classifier PATH]
                  [--num-reference N] [--cache-dir DIR] [--json FILE] [--device cuda]

DIR holds PNGs, e.g. from `python sample.py --ckpt ... --seeds 0-49999 --out DIR`. The reference is
the training set of the checkpoint's (or the config's) data section. --metrics: any of fid, kid,
isc (Inception Score), prc (precision/recall). Inception weights come from torch-fidelity's cache or
--fid-weights. --features classifier (digits) uses a small classifier trained once on the real
digits and cached as DIR_CACHE/classifier-<data>-<px>.pt (its held-out accuracy is printed), so
MNIST runs are measurable with no Inception weights; its distances compare only with each other.
"""

import json
from pathlib import Path

from training.checkpoint import read_checkpoint
from training.cli import Parser, UsageError, main_guard
from training.config import load_config
from training.data import build_dataset


@main_guard
def main(argv=None):
    parser = Parser(description='FID and friends of generated images against the training images.')
    parser.add_argument('--images', required=True, help='folder of generated PNGs')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--ckpt', help="checkpoint whose data section gives the reference images")
    source.add_argument('--config', help='YAML config whose data section gives the reference images')
    add_metric_args(parser)
    parser.add_argument('--device', default='cpu', help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    if not Path(args.images).is_dir():
        raise UsageError(f'--images: {args.images}: no such folder')
    check_metric_args(args)
    config = read_checkpoint(args.ckpt)[1] if args.ckpt else load_config(args.config)
    compute(args, args.images, build_dataset(config.data), args.device)


def add_metric_args(parser):
    """The metric flags, shared with `sample.py --fid`."""
    parser.add_argument('--metrics', default='fid,kid', help='comma-separated: fid, kid, isc, prc (default fid,kid)')
    parser.add_argument('--features', choices=('inception', 'classifier'), default='inception')
    parser.add_argument('--fid-weights', help="Inception weights file (default: torch-fidelity's cache)")
    parser.add_argument('--classifier', help='digit classifier file (default: trained once into --cache-dir)')
    parser.add_argument('--num-reference', type=int, help='a fixed random subset of N training images (default all)')
    parser.add_argument('--cache-dir', default=str(Path.home() / '.cache' / 'cedm'),
                        help='reference statistics and the classifier (default ~/.cache/cedm)')
    parser.add_argument('--json', help='also write the results to this JSON file')


def check_metric_args(args):
    if args.num_reference is not None and args.num_reference < 2:
        raise UsageError(f'--num-reference: must be >= 2 (got {args.num_reference})')


def compute(args, images, data, device):
    """Print (and with --json write) the metrics of the PNGs in `images` against the training images
    of `data` (a dataset of `training.data.build_dataset`)."""
    from training import fidelity  # torch-fidelity is needed here only

    if len(data.shape) != 3:
        raise UsageError(f"data.name '{data.name}': not image data")

    weights = args.fid_weights
    if args.features == 'classifier':
        if not data.name.startswith('mnist'):
            raise UsageError(f"--features classifier: digits only (data.name is '{data.name}')")
        if args.classifier:
            weights = Path(args.classifier)
            if not weights.is_file():
                raise UsageError(f'--classifier: {weights}: file not found')
        else:
            weights, accuracy = fidelity.cached_classifier(data, args.cache_dir)
            if accuracy is not None:
                print(f'fid: trained the digit classifier on {data.name}: held-out accuracy {accuracy:.3f}; saved {weights}')
    try:
        result = fidelity.image_metrics(images, data, metrics=[m.strip() for m in args.metrics.split(',')],
                                        features=args.features, weights=weights, cache_root=args.cache_dir,
                                        num_reference=args.num_reference, cuda=str(device).startswith('cuda'))
    except fidelity.FidelityError as e:
        raise UsageError(str(e)) from None
    for name, value in result.items():
        print(f'{name:36s} {value:.6g}')
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
