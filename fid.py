"""FID and friends between generated images and the training images (torch-fidelity).

    python fid.py --images DIR (--ckpt RUN/checkpoints/last.ckpt | --config FILE) [--metrics fid,kid]
                  [--features inception|classifier|autoencoder] [--fid-weights PATH] [--classifier PATH]
                  [--autoencoder PATH]
                  [--num-reference N] [--cache-dir DIR] [--json FILE] [--device cuda] [--quiet]

DIR holds PNGs, e.g. from `python sample.py --ckpt ... --seeds 0-49999 --out DIR`. The reference is
the training set of the checkpoint's (or the config's) data section. --metrics: any of fid, kid,
isc (Inception Score), prc (precision/recall). Inception weights come from torch-fidelity's cache or
--fid-weights. --features classifier (digits) uses a small classifier trained once on the real
digits and cached as DIR_CACHE/classifier-<data>-<px>.pt (its held-out accuracy is printed), so
MNIST runs are measurable with no Inception weights; its distances compare only with each other and
are named for it (frechet_classifier_distance, kernel_classifier_distance_mean, ...). The classifier
barely sees background noise; --features autoencoder measures in the features of a digit autoencoder
(evaluation/digit_features.py: shape and texture; trained once, 1,000 digits held out, cached as
DIR_CACHE/autoencoder-<data>-<px>.pt). For digits two pixel checks follow (evaluation/pixel_stats.py):
background_rms (8-bit levels where every training digit is black) and spectrum_distance.
A first line names the images, the reference set and the features; progress bars on stderr count the
digit classifier's training steps (on its first run) and the images whose features are computed, per
second (none with --quiet). torch-fidelity's image loading takes at most one worker per available core.
"""

from pathlib import Path

from cli import (Parser, UsageError, add_metric_args, check_checkpoint_path, check_data, check_device, check_metric_args,
                 compute, main_guard)


@main_guard
def main(argv=None):
    parser = Parser(description='FID and friends of generated images against the training images.')
    parser.add_argument('--images', required=True, help='folder of generated PNGs')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--ckpt', '--network', dest='ckpt', help="checkpoint whose data section gives the reference images")
    source.add_argument('--config', help='YAML config whose data section gives the reference images')
    add_metric_args(parser)
    parser.add_argument('--device', default='cpu', help="cpu, cuda (this process's GPU: cuda:LOCAL_RANK under torchrun) "
                        "or cuda:N (default cpu)")
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    images = Path(args.images)
    if not images.is_dir():
        raise UsageError(f'--images: {images}: ' + ('a file, not a folder' if images.exists() else 'no such folder'))
    if args.ckpt:
        check_checkpoint_path(args.ckpt)
    check_metric_args(args)
    device = check_device(args.device)

    from checkpoint_file import read_checkpoint
    from config import load_config
    from datasets import build_dataset
    config = read_checkpoint(args.ckpt)[1] if args.ckpt else load_config(args.config)
    data = build_dataset(config.data)
    check_data(args, data)
    compute(args, args.images, data, device)


if __name__ == '__main__':
    main()
