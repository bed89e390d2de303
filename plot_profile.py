"""Plot a checkpoint's entropy profile next to the σ schedules it induces.

    python plot_profile.py --ckpt RUN/checkpoints/last.ckpt [--steps 18] [--out FILE.png] [--estimate-profile]

Draws the entropy rate (nats per log σ) beside the Gaussian rate lmmse/σ² and the structure rate,
with the training σ density, H(σ) − H(σ_min), and the entropic and rescaled times with the karras
(ρ=7), log-linear, entropic, rescaled-entropic, structure and surrogate (for the config's solver)
schedules as ticks. Also prints the logistic log-SNR distribution fitted to the profile as config
overrides, so a measured profile can be exported as a fixed training schedule.
"""

from cli import (PROFILE_SCHEDULE_NAMES, SURROGATE_SCHEDULE_NAME, Parser, UsageError, check_checkpoint_path, check_device,
                 check_output_file, load_for_sampling, main_guard, output_path)


@main_guard
def main(argv=None):
    parser = Parser(description="Plot a checkpoint's entropy profile and the σ schedules it induces.")
    parser.add_argument('--ckpt', '--network', dest='ckpt', required=True, help='checkpoint file')
    parser.add_argument('--steps', type=int, default=18, help='steps of the schedules drawn (default 18)')
    parser.add_argument('--out', help='PNG to write (default: RUN/profile_schedules.png)')
    parser.add_argument('--estimate-profile', action='store_true', help='re-estimate the profile offline with the model')
    parser.add_argument('--no-ema', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device')
    args = parser.parse_args(argv)
    if args.steps < 2:
        raise UsageError(f'--steps: must be >= 2 (got {args.steps})')
    check_checkpoint_path(args.ckpt)
    out = output_path(args.out, args.ckpt, 'profile_schedules.png', check_output_file)
    check_device(args.device)

    from evaluation import plots
    from training.noise import build_noise
    model = load_for_sampling(args)
    if not model.profile.num_refreshes and not args.estimate_profile:
        raise UsageError(f'--ckpt: {args.ckpt}: its profile was never refreshed (noise.refresh_every); '
                         'give --estimate-profile to measure one with the model')
    schedules = {name: model.sigmas(args.steps, name)
                 for name in ('karras', 'loglinear', *PROFILE_SCHEDULE_NAMES, SURROGATE_SCHEDULE_NAME)}
    out.parent.mkdir(parents=True, exist_ok=True)
    trained = build_noise(model.config.noise, model.profile).log_density  # the density the run drew σ from
    plots.save(plots.profile_figure(model.profile, schedules, training_log_density=trained), out)
    loc, scale = model.profile.fit_logistic()
    print(f'plot_profile: wrote {out}')
    print(f'logistic log-SNR fit: noise.name=logistic noise.loc={loc:.4f} noise.scale={scale:.4f}')


if __name__ == '__main__':
    main()
