"""What the training loss weights and what it leaves alone: the importance weight keeps the base objective,
and the entropy profile gets the unweighted errors."""

import copy

import lightning as L
import torch

from training import rng
from config import load_config
from entropy.profile import EntropyProfile
from training.loss import edm_loss
from training.module import EDMModule


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_importance_weighted_loss_keeps_the_base_objective():
    # σ ~ q (the profile's density), weighted by p/q (p: the base lognormal), must estimate E_p[L] for a fixed
    # network: E_q[(p/q)·L] = E_p[L]. Measured: 1.356 against 1.371, 1.0 standard error; the inverted weight
    # q/p gives E_q[(q/p)·L] = 746 (45 standard errors).
    model = EDMModule(load_config('configs/toy/default.yaml', ['noise.name=entropic', 'noise.weighting=importance',
                                                               'noise.warmup_steps=0']))
    # A refreshed profile: the mmse of N(0, 0.5²I) in the ring's 2 dimensions, so q ∝ 1/(0.25 + σ²) per log σ
    # (and the floor), far from the lognormal.
    sigma = model.profile.sigma_grid
    model.profile.update(sigma, 2 * 0.25 * sigma ** 2 / (0.25 + sigma ** 2))
    model.profile.refresh()
    model.data_generator, model.sigma_generator = gen(1), gen(2)  # on_train_start sets them in training
    n = 1 << 15
    with torch.no_grad():
        sigma, weighted, _ = model._loss_terms(n)
        x0 = model.dataset.sample(n, generator=model.data_generator)
        base, _ = edm_loss(model.denoiser, x0, model.noise.base.sample(n, generator=model.sigma_generator),
                           generator=model.data_generator)
    torch.testing.assert_close(model.noise.log_density(sigma), model.profile.log_density(sigma))  # drawn from q

    def standard_errors_off(loss):
        return ((loss.mean() - base.mean()) / (loss.var() / n + base.var() / n).sqrt()).item()

    assert abs(standard_errors_off(weighted)) < 4
    weight = (model.noise.base.log_density(sigma) - model.noise.log_density(sigma)).exp()
    assert standard_errors_off(weighted / weight ** 2) > 10  # the same check sees the weight inverted


def test_profile_gets_the_unweighted_errors_of_the_training_batch():
    # One optimizer step of two passes, refreshed at once: the profile's statistics must be those of the
    # batch's ‖D(x; σ) − x0‖² replayed from the module's generators with the weights it started from, not
    # of the weighted loss λ(σ)‖D − x0‖²/d. The training step's σ come from the base lognormal.
    model = EDMModule(load_config('configs/toy/default.yaml', ['trainer.batch_size=256', 'trainer.batch_gpu=128',
                                                               'noise.refresh_every=1']))
    start = copy.deepcopy(model.denoiser)
    L.Trainer(max_steps=1, accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model)
    assert model.profile.num_refreshes.item() == 1
    data, noise_levels = rng.generator('cpu', 0, 0, 0), rng.generator('cpu', 0, 0, 1)  # rank 0's streams, seed 0
    sigma, sq_err = [], []
    with torch.no_grad():
        for _ in range(2):
            x0 = model.dataset.sample(128, generator=data)
            sigma.append(model.noise.sample(128, generator=noise_levels))
            x = x0 + sigma[-1][:, None] * torch.randn(x0.shape, generator=data)
            sq_err.append((start(x, sigma[-1]) - x0).square().sum(1))
    expected = EntropyProfile(num_bins=64, spectrum=model.profile.spectrum)
    expected.update(torch.cat(sigma), torch.cat(sq_err))
    expected.refresh()
    assert expected.total_count.sum().item() == 256
    for name in ('mmse_estimate', 'ema_sum', 'ema_count', 'total_count'):
        torch.testing.assert_close(getattr(model.profile, name), getattr(expected, name), msg=name)


def test_divide_weighting_makes_the_effective_weight_follow_the_density(tmp_path):
    # InfoNoise's reading: σ drawn ∝ rate/λ(σ), the loss keeping λ, so p(σ)·λ(σ) ∝ rate. With the floor off,
    # log p + log λ − log rate is the same constant in every bin; under `keep` it is not.
    overrides = ['noise.name=entropic', 'noise.warmup_steps=0', 'noise.floor=0']
    model = EDMModule(load_config('configs/toy/default.yaml', [*overrides, 'noise.weighting=divide']))
    sigma = model.profile.sigma_grid
    gaussian_errors = (2 * 0.25 * sigma ** 2 / (0.25 + sigma ** 2)).repeat(16)  # N(0, 0.5²I), 16 per bin (min_count)
    model.profile.update(sigma.repeat(16), gaussian_errors)
    model.profile.refresh()
    edm_weight = (sigma ** 2 + 0.5 ** 2) / (sigma * 0.5) ** 2  # EDM's λ(σ), σ_data 0.5
    torch.testing.assert_close(model.profile.loss_weight, edm_weight)
    rate = model.profile.rate()[1]
    effective = model.profile.log_density(sigma) + edm_weight.log() - rate.log()
    torch.testing.assert_close(effective, effective.mean().expand_as(effective), rtol=0, atol=1e-9)
    kept = EDMModule(load_config('configs/toy/default.yaml', overrides)).profile
    kept.update(sigma.repeat(16), gaussian_errors)
    kept.refresh()
    assert (kept.log_density(sigma) - rate.log()).std() < 1e-9  # keep: p itself ∝ rate
    assert effective.std() < 1e-9 < (kept.log_density(sigma) + edm_weight.log() - rate.log()).std()
    # The division travels with the profile's state, so a resumed run draws from the same density.
    restored = EntropyProfile()
    restored.load_state_dict(model.profile.state_dict())
    torch.testing.assert_close(restored.cdf_knots, model.profile.cdf_knots)
    torch.testing.assert_close(restored.loss_weight, edm_weight)
