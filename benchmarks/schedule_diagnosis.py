"""Where each schedule puts its steps, and what that costs a solver: a diagnosis for one checkpoint.

    python -m benchmarks.schedule_diagnosis --ckpt RUN/checkpoints/last.ckpt [--solver heun] [--steps 8] [--num 200]

For every schedule: its σ, the first step's ratio σ_0/σ_1 and the largest step in log σ (and where
it falls), the surrogate's expected squared endpoint error (`entropy.surrogate`, the Gaussian with
the profile's mmse curve) and, for heun, the size of the second-order correction on each step,
‖x_heun − x_euler‖/‖x_heun − x‖ averaged over `--num` samples of the model (class-conditional models:
random classes): near 1 where the step is too long for its Euler prediction to be trusted.
"""

import argparse
import math

import torch

import sampling
from entropy import PROFILE_SCHEDULES, SURROGATE_SCHEDULE, surrogate_error
from entropy.surrogate import SURROGATE_SOLVERS, fit_modes
from sampling_model import load_model

SCHEDULES = ('karras', 'loglinear', *PROFILE_SCHEDULES, SURROGATE_SCHEDULE)


def heun_corrections(model, sigmas, num, seed=0):
    """Per step of `sampling.heun`, the mean over samples of ‖x_heun − x_euler‖/‖x_heun − x‖: how much the
    corrector moved the predictor's endpoint (x + (σ' − σ)(x − D)/σ), relative to the whole step (0 on the
    last step, which has no correction)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num, *model.shape, generator=generator) * sigmas[0]
    classes = torch.randint(model.num_classes, (num,), generator=generator) if model.num_classes else None
    denoiser = model.sampling_denoiser(True, classes, 1.0, num) if classes is not None else model.sampling_denoiser()
    previous, out = [x], []

    def record(step):
        x, heun = previous[0], step['x']
        euler = x + (step['sigma_next'] - step['sigma']) * (x - step['denoised']) / step['sigma']
        moved = (heun - euler).flatten(1).norm(dim=1) / (heun - x).flatten(1).norm(dim=1)
        out.append(0.0 if step['sigma_next'] == 0 else moved.mean().item())
        previous[0] = heun

    sampling.heun(denoiser, x, sigmas, callback=record)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ckpt', required=True)
    parser.add_argument('--solver', default='heun', choices=sorted(sampling.SOLVERS))
    parser.add_argument('--steps', type=int, default=8)
    parser.add_argument('--num', type=int, default=200, help='samples for the heun corrections (0: none)')
    args = parser.parse_args()
    model = load_model(args.ckpt, device='cpu')
    sigma, mmse = model.profile.mmse()
    solver = SURROGATE_SOLVERS[args.solver]  # the deterministic solver of the same order
    if torch.isfinite(mmse).all():
        scales, weights = fit_modes(sigma, mmse, model.profile.sigma_min, model.profile.sigma_max)
        surrogate = f'{len(scales)} Gaussian modes, tr Cov {float((weights * scales ** 2).sum()):.1f}'
    else:
        scales = weights = None
        surrogate = 'none (the profile was never refreshed)'
    print(f'{args.ckpt}: {args.solver}, {args.steps} steps; surrogate: {surrogate}')
    for name in SCHEDULES:
        sigmas = model.sigmas(args.steps, name, solver=args.solver)
        gaps = (sigmas[:-2].log() - sigmas[1:-1].log())
        widest = int(gaps.argmax())
        print(f'\n{name}: σ = ' + ', '.join(f'{s:.3g}' for s in sigmas.tolist()))
        print(f'  first step ×{(sigmas[0] / sigmas[1]).item():.3g}; widest step {gaps[widest].item():.2f} e-folds '
              f'({sigmas[widest].item():.3g} → {sigmas[widest + 1].item():.3g}, of {math.log(sigmas[0] / sigmas[-2]):.2f})'
              + ('' if scales is None else f'; surrogate error {surrogate_error(sigmas, solver, scales, weights):.4g}'))
        if args.solver == 'heun' and args.num:
            corrections = heun_corrections(model, sigmas, args.num)
            print('  heun correction / step: ' + ', '.join(f'{c:.2f}' for c in corrections))


if __name__ == '__main__':
    main()
