"""Plot a checkpoint's entropy profile next to the σ schedules it induces.

    python plot_profile.py --ckpt RUN/checkpoints/last.ckpt [--steps 18] [--out FILE.png] [--estimate-profile]

Draws the entropy rate (nats per log σ) beside the Gaussian rate lmmse/σ² and the structure rate,
with the training σ density, H(σ) − H(σ_min), and the entropic and rescaled times with the karras
(ρ=7), log-linear, entropic, rescaled-entropic and structure schedules as ticks. Also prints the logistic log-SNR distribution fitted to the profile as config
overrides, so a measured profile can be exported as a fixed training schedule.
"""

from pathlib import Path

from training import plots
from training.cli import Parser, UsageError, load_for_sampling, main_guard
from training.entropy import PROFILE_SCHEDULES


@main_guard
def main(argv=None):
    parser = Parser(description="Plot a checkpoint's entropy profile and the σ schedules it induces.")
    parser.add_argument('--ckpt', required=True, help='checkpoint file')
    parser.add_argument('--steps', type=int, default=18, help='steps of the schedules drawn (default 18)')
    parser.add_argument('--out', help='PNG to write (default: RUN/profile_schedules.png)')
    parser.add_argument('--estimate-profile', action='store_true', help='re-estimate the profile offline with the model')
    parser.add_argument('--no-ema', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device')
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise UsageError(f'--steps: must be >= 1 (got {args.steps})')
    model = load_for_sampling(args)
    schedules = {name: model.sigmas(args.steps, name) for name in ('karras', 'loglinear', *PROFILE_SCHEDULES)}
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / 'profile_schedules.png'
    plots.save(plots.profile_figure(model.profile, schedules), out)
    loc, scale = model.profile.fit_logistic()
    print(f'plot_profile: wrote {out}')
    print(f'logistic log-SNR fit: noise.name=logistic noise.loc={loc:.4f} noise.scale={scale:.4f}')


if __name__ == '__main__':
    main()
