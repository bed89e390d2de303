"""The conditional entropy of the forward process, measured from denoising errors.

For x = x0 + σε the I-MMSE identity (Guo, Shamai, Verdú 2005) gives the entropy rate
    dH[x0 | x]/dlog σ = mmse(σ)/σ²   nats per log σ,
with mmse(σ) = E‖x0 − E[x0|x]‖² summed over dimensions, in data units. `EntropyProfile` estimates
mmse(σ) on a grid of log σ from per-sample squared errors — the unweighted errors training computes
anyway (online), or those of a given denoiser (`from_denoiser`, offline) — and turns it into
- training noise levels drawn with density ∝ rate × gate per log σ, mixed with a log-uniform floor
  (InfoNoise, arXiv 2602.18647);
- sampler discretisations uniform in entropic or rescaled entropic time (arXiv 2504.13612);
- a logistic distribution over log-SNR (Kong et al. 2023);
- given the data's covariance spectrum, the structure rate s(σ) = (lmmse − mmse)/σ² ≥ 0 per log σ: the
  rate at which noise destroys the data's non-Gaussian structure (lmmse: the Wiener filter's error,
  `entropy.spectrum`), whose integral over log σ is the data's negentropy.
A trained network's error is at least the mmse, so its profile is biased up, most early in training.
"""

import math

import torch
import torch.distributed as dist

from .spectrum import covariance_spectrum, lmmse as linear_mmse

# The profile's σ densities by name (noise.density; the kinds of `EntropyProfile.sigmas`): each maps
# (profile, σ at the bin centres) to the unnormalised density per log σ. A new one is one entry here.
DENSITIES = {
    'entropic': lambda profile, sigma: profile.mmse_estimate / sigma ** 2,  # the entropy rate: entropic time
    'rescaled': lambda profile, sigma: profile.mmse_estimate / sigma,  # rescaled entropic time
    'structure': lambda profile, sigma: profile.structure_rate()[1].clamp_min(0),  # NaN without a spectrum
    'rescaled-structure': lambda profile, sigma: profile.structure_rate()[1].clamp_min(0) * sigma,
}
# The densities built on the structure rate, whose draws mix with a base distribution (`structure_fraction`).
STRUCTURE_DENSITIES = ('structure', 'rescaled-structure')
# The sampling schedules read off a profile (sample.py --schedule), and the density of each.
PROFILE_SCHEDULES = {'entropic': 'entropic', 'rescaled-entropic': 'rescaled', 'structure': 'structure',
                     'rescaled-structure': 'rescaled-structure'}
# Log-uniform share mixed into the times behind `sigmas`: keeps σ strictly monotone where the rate vanishes.
TIME_FLOOR = 1e-6
# Estimated negentropy per dimension (nats) from which `structure_fraction` is 1.
STRUCTURE_NATS = 0.1
# Bin widths by which σ may leave the grid and still count (σ rounded to float32 at the ends).
ON_GRID_SLACK = 1e-4
# What the error sums hold, saved with the state: 1, the squared errors; 2, their excess over the Wiener
# filter's error at each sample's own σ (`EntropyProfile.update`).
STATISTICS_VERSION = 2
# Most elements of the [samples, d] intermediate when `update` computes the Wiener filter's error per sample.
LMMSE_BLOCK = 1 << 22


def _interp(x, xp, fp):
    """Piecewise-linear interpolation of the knots (xp, fp) at x; xp non-decreasing (flat runs allowed),
    extrapolated linearly along the end segments."""
    i = torch.searchsorted(xp, x, right=True).clamp(1, len(xp) - 1)  # x lies in [xp[i-1], xp[i]) where it can
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    step = x1 - x0
    t = torch.where(step > 0, (x - x0) / torch.where(step > 0, step, 1.0), 0.0)
    return f0 + t * (f1 - f0)


class EntropyProfile(torch.nn.Module):
    """The mmse profile on `num_bins` equal bins in log σ over [sigma_min, sigma_max], and what follows from it.

    The density that `sample` draws from, per log σ, is piecewise constant per bin:
        p(log σ) = (1 − floor) · w(σ) / ∫w + floor / log(sigma_max / sigma_min),
        w(σ) = rate(σ) · g(σ),  rate = mmse/σ² ('entropic': uniform in entropic time)
                                  or mmse/σ ('rescaled': uniform in rescaled entropic time)
                                  or max(lmmse − mmse, 0)/σ² ('structure': see `structure_rate`)
                                  or max(lmmse − mmse, 0)/σ ('rescaled-structure'),
    with the optional gate g(σ) = σⁿ/(σⁿ + cⁿ) (gate_c = c, gate_n = n; InfoNoise) that damps the
    low-σ tail where every continuous distribution has rate ≈ d nats per e-fold, and, once
    `set_loss_weight` gave the loss weight λ(σ) of training, w divided by λ: the loss keeps λ, so the
    effective weight p(σ)·λ(σ) of each σ follows rate · g (InfoNoise's reading). The floor keeps every
    σ range visited, so the profile keeps being measured everywhere. Without usable weight (uninitialised,
    all zero, or a structure density without a spectrum or with the model no better than the Wiener filter)
    the density is log-uniform; `structure_fraction` says how far to trust the structure densities.
    The rescaled structure density is to the structure rate what rescaled entropic time is to the
    entropy rate: for data on a low-dimensional manifold (images) the structure rate tends to a constant
    as σ → 0, about (rank of the covariance − the manifold's dimension) nats per log σ, so the structure
    density puts most of its mass at the smallest σ of the grid; the factor σ makes it vanish there.

    `spectrum` (optional, or `set_spectrum` later): the eigenvalues [d] of the data covariance, in data
    units squared, from `entropy.spectrum.covariance_spectrum`; they give lmmse and the structure rate.

    Estimation, per bin: `update` adds each error's excess over the Wiener filter's error at the
    sample's own σ, ‖D − x0‖² − lmmse(σ_i) (the error itself without a spectrum), to pending float64 sums;
    `refresh` folds them into a running mean Σ_r decay^a(r) S_r / Σ_r decay^a(r) C_r over the refreshes r
    that brought the bin samples (S_r, C_r: their sum and count; a(r): how many such refreshes came later),
    so a bin without new samples keeps its value and a bin with few new samples moves little. The mmse
    estimate at the bin centre σ_c is lmmse(σ_c) plus that mean, so the structure rate of a measured bin
    is the mean of (lmmse(σ_i) − ‖D − x0‖²)/σ_c² nats per log σ: zero in expectation for Gaussian data
    wherever in the bin the σ_i fall. Comparing the bin's mean error with lmmse(σ_c) instead is biased by
    the curvature of lmmse across the bin, about −d·h²/6 nats per log σ where σ² is below the data's
    variances (h: the bin width; −3.6 for d = 784 on the default grid), a bias of the order of d on a
    difference of two rates of the order of d that is itself small. Bins with fewer
    than `min_count` samples in all are starved: filled by linear interpolation in log σ between the
    nearest measured bins; beyond the outermost ones the rate is held constant at the low end and
    the mmse at the high end. Until some bin is measured the profile
    is uninitialised (mmse NaN) and sampling falls back to log-uniform.

    A `torch.nn.Module` with buffers and no parameters: `.to(device)` moves it and its `state_dict`
    (float64 sums, counters, and the configuration, spectrum and STATISTICS_VERSION as extra state)
    restores it exactly. A state saved before version 2 held the errors themselves; loaded with a
    spectrum, its sums become excesses over lmmse at the bin centres (the estimates it had are kept), and
    its pending sums, which a resumed run may copy in afterwards from its ranks' own states, are
    converted alike at the next `update`, `refresh` or `state_dict`.
    Keep it out of whole-module dtype casts (`.half()`, `.to(torch.bfloat16)`), which would round the
    float64 sums.
    """

    def __init__(self, sigma_min=0.002, sigma_max=80.0, num_bins=64, ema_decay=0.9, min_count=16, floor=0.05,
                 gate_c=None, gate_n=3.0, density='entropic', dim=None, spectrum=None, structure_nats=STRUCTURE_NATS,
                 device=None):
        super().__init__()
        if not (isinstance(num_bins, int) and num_bins >= 2):
            raise ValueError(f'num_bins: expected an integer >= 2, got {num_bins!r}')
        for name in ('pending_sum', 'pending_count', 'ema_sum', 'ema_count', 'total_count'):
            self.register_buffer(name, torch.zeros(num_bins, dtype=torch.float64, device=device))
        self.register_buffer('num_refreshes', torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer('num_dropped', torch.zeros((), dtype=torch.long, device=device))
        self._legacy_pending = False  # pending sums of a version-1 state, still errors (`_settle_legacy_pending`)
        # Derived from the above and the configuration; rebuilt by `refresh` and on loading a state.
        for name, size in (('mmse_estimate', num_bins), ('cdf_knots', num_bins + 1), ('log_edges', num_bins + 1)):
            self.register_buffer(name, torch.zeros(size, dtype=torch.float64, device=device), persistent=False)
        # Its length is the data's, unknown to a profile built to load a state: saved as extra state; a
        # non-persistent buffer only so that `.to(device)` moves it.
        self.register_buffer('spectrum', None, persistent=False)
        self.register_buffer('loss_weight', None, persistent=False)  # λ at the bin centres (`set_loss_weight`)
        self._configure(sigma_min=sigma_min, sigma_max=sigma_max, num_bins=num_bins, ema_decay=ema_decay,
                        min_count=min_count, floor=floor, gate_c=gate_c, gate_n=gate_n, density=density, dim=dim,
                        structure_nats=structure_nats)
        self.set_spectrum(spectrum)

    def _configure(self, sigma_min, sigma_max, num_bins, ema_decay, min_count, floor, gate_c, gate_n, density, dim,
                   structure_nats):
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f'sigma_min, sigma_max: expected 0 < sigma_min < sigma_max < inf, '
                             f'got {sigma_min}, {sigma_max}')
        if num_bins != len(self.ema_sum):
            raise ValueError(f'num_bins: {num_bins} does not match the {len(self.ema_sum)} bins of this profile')
        if not 0 <= ema_decay < 1:
            raise ValueError(f'ema_decay: expected a number in [0, 1), got {ema_decay}')
        if not min_count >= 1:
            raise ValueError(f'min_count: expected at least 1, got {min_count}')
        if not 0 <= floor <= 1:
            raise ValueError(f'floor: expected a number in [0, 1], got {floor}')
        if gate_c is not None and not gate_c > 0:
            raise ValueError(f'gate_c: expected None or a positive σ, got {gate_c}')
        if not gate_n > 0:
            raise ValueError(f'gate_n: expected a positive exponent, got {gate_n}')
        if density not in DENSITIES:
            raise ValueError(f'density: expected one of {tuple(DENSITIES)}, got {density!r}')
        if dim is not None and not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f'dim: expected None or a positive integer, got {dim!r}')
        if not 0 < structure_nats < math.inf:
            raise ValueError(f'structure_nats: expected a positive number of nats, got {structure_nats}')
        self.sigma_min, self.sigma_max, self.num_bins = float(sigma_min), float(sigma_max), num_bins
        self.ema_decay, self.min_count, self.floor = float(ema_decay), min_count, float(floor)
        self.gate_c, self.gate_n, self.density, self.dim = gate_c, float(gate_n), density, dim
        self.structure_nats = float(structure_nats)
        self.log_sigma_min, self.log_sigma_max = math.log(sigma_min), math.log(sigma_max)
        self.bin_width = (self.log_sigma_max - self.log_sigma_min) / num_bins  # in log σ
        self.log_edges.copy_(torch.linspace(self.log_sigma_min, self.log_sigma_max, num_bins + 1, dtype=torch.float64))

    def get_extra_state(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, num_bins=self.num_bins,
                    ema_decay=self.ema_decay, min_count=self.min_count, floor=self.floor, gate_c=self.gate_c,
                    gate_n=self.gate_n, density=self.density, dim=self.dim, structure_nats=self.structure_nats,
                    spectrum=None if self.spectrum is None else self.spectrum.tolist(),
                    loss_weight=None if self.loss_weight is None else self.loss_weight.tolist(),
                    statistics_version=STATISTICS_VERSION)

    def set_extra_state(self, state):
        # Runs after the buffers are loaded, so the derived ones are rebuilt from the loaded sums.
        # States saved before the structure rate existed have neither spectrum nor structure_nats; states
        # saved before statistics version 2 hold errors, which are excesses over a zero lmmse without a spectrum.
        state = {'structure_nats': STRUCTURE_NATS, **state}
        spectrum = state.pop('spectrum', None)
        loss_weight = state.pop('loss_weight', None)  # absent before it existed
        version = state.pop('statistics_version', 1)
        self._configure(**state)
        self.loss_weight = None if loss_weight is None else torch.tensor(loss_weight, dtype=torch.float64,
                                                                           device=self.ema_sum.device)
        self.set_spectrum(spectrum)
        self._legacy_pending = version < STATISTICS_VERSION and self.spectrum is not None
        if self._legacy_pending:
            self.ema_sum.sub_(self.ema_count * self._wiener_error(self.sigma_grid))
            self._rebuild()

    def _settle_legacy_pending(self):
        """Turn pending errors of a version-1 state into excesses over lmmse at the bin centres."""
        if self._legacy_pending:
            self.pending_sum.sub_(self.pending_count * self._wiener_error(self.sigma_grid))
            self._legacy_pending = False

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._settle_legacy_pending()  # the state says STATISTICS_VERSION for the pending sums too
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def set_spectrum(self, eigenvalues):
        """Set the eigenvalues [d] of the data covariance (data units squared; None: none), which give
        `lmmse` and the structure rate, and rebuild the sampling CDF. Every rank must set the same ones
        (same data or seed) for all ranks to sample from one distribution. The sums held are kept as they
        are: they are excesses over the Wiener filter of the spectrum set when they were added, so set it
        before the first `update`."""
        if eigenvalues is not None:
            eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64, device=self.ema_sum.device)
            if eigenvalues.ndim != 1 or len(eigenvalues) == 0 or not eigenvalues.isfinite().all():
                raise ValueError(f'spectrum: expected a non-empty 1-D tensor of finite eigenvalues, '
                                 f'got shape {tuple(eigenvalues.shape)}')
            if self.dim is not None and len(eigenvalues) != self.dim:
                raise ValueError(f'spectrum: {len(eigenvalues)} eigenvalues for data of dim {self.dim}')
            eigenvalues = eigenvalues.clamp_min(0)  # rounding in the eigensolver
        self.spectrum = eigenvalues
        self._rebuild()

    def set_loss_weight(self, loss_weight):
        """Divide the training density by the loss weight λ(σ) [num_bins] at the bin centres (`sigma_grid`;
        None: no division) and rebuild the sampling CDF (class docstring)."""
        if loss_weight is not None:
            loss_weight = torch.as_tensor(loss_weight, dtype=torch.float64, device=self.ema_sum.device)
            if loss_weight.shape != (self.num_bins,) or not (loss_weight.isfinite() & (loss_weight > 0)).all():
                raise ValueError(f'loss_weight: expected {self.num_bins} positive finite values at the bin centres, '
                                 f'got shape {tuple(loss_weight.shape)}')
        self.loss_weight = loss_weight
        self._rebuild()

    @property
    def log_sigma_grid(self):
        """Bin centres in log σ [num_bins], float64."""
        return self.log_edges[:-1] + 0.5 * self.bin_width

    @property
    def sigma_grid(self):
        """Bin centres σ [num_bins], float64."""
        return self.log_sigma_grid.exp()

    # ----------------------------------------------------------------------------------------------
    # Estimation.

    def _wiener_error(self, sigma):
        """lmmse at each σ [n] (float64), zero without a spectrum; in blocks of samples, so that the
        [samples, d] intermediate stays small however many errors one `update` brings."""
        if self.spectrum is None:
            return torch.zeros_like(sigma)
        rows = max(1, LMMSE_BLOCK // len(self.spectrum))
        return torch.cat([linear_mmse(part, self.spectrum) for part in sigma.split(rows)])

    @torch.no_grad()
    def update(self, sigma, sq_err):
        """Add per-sample errors: `sigma` [n] and `sq_err` [n] = ‖D(x0 + σε; σ) − x0‖², unweighted,
        summed over dimensions, in data units. Zero errors count. What the pending sums get is each
        error's excess over the Wiener filter's, sq_err − lmmse(σ) (class docstring).

        σ outside the grid by more than ON_GRID_SLACK bin widths is dropped (its error says nothing
        about a σ on the grid); the rest is clamped into the edge bins. Non-finite errors are dropped
        and counted in `num_dropped`. Runs on the buffers' device without host synchronisation.
        On the CPU the errors are added into the pending sums one by one in order, so the sums do not
        depend on how the samples were split between calls: a run that saved and resumed its
        statistics at any step holds the same sums, bit for bit, as one that never stopped.
        """
        self._settle_legacy_pending()
        device = self.pending_sum.device
        sq_err = sq_err.detach().reshape(-1).to(device, torch.float64)
        sigma = sigma.detach().reshape(-1).to(device, torch.float64)
        position = (sigma.log() - self.log_sigma_min) / self.bin_width
        finite = sq_err.isfinite()
        keep = finite & (position > -ON_GRID_SLACK) & (position < self.num_bins + ON_GRID_SLACK)  # False for NaN σ
        # Dropped samples add 0 to the sum and the count of some bin: no data-dependent shapes.
        index = position.nan_to_num(0.0).clamp(0, self.num_bins - 1).long()
        self.pending_sum.index_add_(0, index, torch.where(keep, sq_err - self._wiener_error(sigma), 0.0))
        self.pending_count.index_add_(0, index, keep.double())
        self.num_dropped.add_((~finite).sum())

    @torch.no_grad()
    def refresh(self):
        """Fold the pending sums into the running means (summed over ranks first when torch.distributed
        is initialised, so every rank holds the same profile: a collective, every rank must call it),
        then rebuild the estimate and the sampling CDF. No host synchronisation."""
        self._settle_legacy_pending()
        if dist.is_available() and dist.is_initialized():
            pending = torch.stack([self.pending_sum, self.pending_count])
            dist.all_reduce(pending)
            self.pending_sum.copy_(pending[0])
            self.pending_count.copy_(pending[1])
        seen = self.pending_count > 0
        self.ema_sum.copy_(torch.where(seen, self.ema_decay * self.ema_sum + self.pending_sum, self.ema_sum))
        self.ema_count.copy_(torch.where(seen, self.ema_decay * self.ema_count + self.pending_count, self.ema_count))
        self.total_count += self.pending_count
        self.pending_sum.zero_()
        self.pending_count.zero_()
        self.num_refreshes += 1
        self._rebuild()

    def _rebuild(self):
        """mmse estimate per bin, lmmse at the centre plus the mean excess (starved bins interpolated; NaN
        while no bin is measured), and sampling CDF."""
        index = torch.arange(self.num_bins, device=self.ema_sum.device)
        valid = self.total_count >= self.min_count
        excess = self.ema_sum / self.ema_count.clamp_min(1e-300)
        mean = torch.where(valid, self._wiener_error(self.sigma_grid) + excess, 0.0)
        # Nearest measured bin on each side (-1 / num_bins: none), without leaving the device.
        left = torch.where(valid, index, -1).cummax(0).values
        right = torch.where(valid, index, self.num_bins).flip(0).cummin(0).values.flip(0)
        has_left, has_right = left >= 0, right < self.num_bins
        left, right = left.clamp(0, self.num_bins - 1), right.clamp(0, self.num_bins - 1)
        between = has_left & has_right & (right > left)
        t = torch.where(between, (index - left).double() / (right - left).clamp_min(1), torch.where(has_left, 0.0, 1.0))
        estimate = (1 - t) * mean[left] + t * mean[right]
        # Below the first measured bin hold the rate mmse/σ² constant, not the mmse: at small σ
        # mmse ≈ d·σ², and a constant mmse would inflate the rate like 1/σ² exactly where the plain
        # entropic density already over-samples (after a lognormal warm-up the lowest bins starve).
        # Above the last measured bin mmse → tr Cov(x0), so holding it constant is right there.
        below = ~has_left & has_right
        estimate = torch.where(below, estimate * (2 * (index - right).double() * self.bin_width).exp(), estimate)
        self.mmse_estimate.copy_(torch.where(has_left | has_right, estimate, math.nan))
        weight = self._weight(self.density) * self._gate(self.sigma_grid)
        if self.loss_weight is not None:
            weight = weight / self.loss_weight
        self.cdf_knots.copy_(self._knots(weight, self.floor))

    # ----------------------------------------------------------------------------------------------
    # The profile.

    def mmse(self):
        """(σ at the bin centres, mmse estimate) [num_bins] each, float64; mmse in data units squared,
        summed over dimensions, NaN while uninitialised."""
        return self.sigma_grid, self.mmse_estimate.clone()

    def rate(self, per_dim=False):
        """(σ, dH/dlog σ = mmse/σ²) in nats per log σ, summed over dimensions (per dimension with
        `per_dim`, which needs `dim`)."""
        if per_dim and self.dim is None:
            raise ValueError('per_dim: this profile was built without `dim`')
        sigma = self.sigma_grid
        return sigma, self.mmse_estimate / sigma ** 2 / (self.dim if per_dim else 1)

    def entropy(self):
        """(σ, H[x0|x_σ] − H[x0|x_σmin]) in nats at the bin centres: the integral over log σ of the rate
        held constant in each bin (the same piecewise-constant model `sample` and `sigmas` use)."""
        sigma, rate = self.rate()
        per_bin = rate * self.bin_width
        return sigma, per_bin.cumsum(0) - 0.5 * per_bin

    def rescaled(self):
        """(σ, rescaled entropic time in [0, 1]) at the bin centres: ∫ mmse(s)/s² ds from sigma_min,
        normalised over the grid (density per log σ ∝ mmse/σ); log-uniform while the profile is
        uninitialised or zero."""
        time = self._knots(self._weight('rescaled'), 0.0)
        return self.sigma_grid, 0.5 * (time[:-1] + time[1:])

    def fit_logistic(self):
        """(loc, scale) of a logistic distribution over log-SNR λ = −2 log σ fitted to the profile
        (Kong et al. 2023), for `training.noise.LogisticLogSNR`.

        What is fitted: the distribution over λ whose CDF is the normalised mmse curve,
            P(Λ ≤ λ) = (mmse(σ_max) − mmse(σ(λ))) / (mmse(σ_max) − mmse(σ_min)),
        i.e. density ∝ −dmmse/dλ (mmse falls as λ grows). loc is its median and scale = (q75 − q25)/(2 ln 3),
        the logistic's quartiles being loc ± scale·ln 3. For Gaussian data N(0, c²I),
        mmse = d c² sigmoid(−λ − 2 log c), so the fit is exact: loc = −2 log c, scale = 1. (A density
        ∝ mmse itself would not be normalisable: mmse → tr Cov(x0) as λ → −∞, so its quantiles would be
        set by sigma_max.) The measured curve, taken linear between bin centres, is first made
        non-decreasing in σ (cumulative max), as the true mmse is.
        """
        mmse = self.mmse_estimate.cummax(0).values
        span = mmse[-1] - mmse[0]
        if not span > 0:
            raise RuntimeError('fit_logistic: the profile is uninitialised or flat; nothing to fit')
        quantiles = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=mmse.device)
        log_sigma = _interp(quantiles, (mmse - mmse[0]) / span, self.log_sigma_grid)
        log_snr = -2 * log_sigma  # λ's 75%, 50% and 25% quantiles: σ and λ run opposite ways
        return log_snr[1].item(), ((log_snr[0] - log_snr[2]) / (2 * math.log(3))).item()

    def lmmse(self):
        """(σ at the bin centres, lmmse) [num_bins] each, float64: the Wiener filter's error for the data's
        covariance (`entropy.spectrum`), in data units squared summed over dimensions; NaN without a spectrum."""
        sigma = self.sigma_grid
        if self.spectrum is None:
            return sigma, torch.full_like(sigma, math.nan)
        return sigma, linear_mmse(sigma, self.spectrum)

    def structure_rate(self):
        """(σ, s = (lmmse − mmse)/σ²) in nats per log σ: s(σ) = −dD(p_σ ‖ g_σ)/dlog σ, the rate at which
        noise destroys the data's non-Gaussian structure (p_σ: the noised data; g_σ: the Gaussian with its
        mean and covariance, noised alike). Zero for Gaussian data; ≥ 0 for the exact mmse, but the estimate
        is not clamped: it dips below zero by noise, or where the model is worse than the Wiener filter.
        NaN without a spectrum or while uninitialised."""
        sigma, lmmse = self.lmmse()
        return sigma, (lmmse - self.mmse_estimate) / sigma ** 2

    def negentropy(self):
        """(σ, D(p_σ ‖ g_σ)) in nats at the bin centres: the structure rate integrated from σ up to
        sigma_max, held constant in each bin (as in `entropy`) — the structure noise σ has not yet
        destroyed. Summed over the whole grid it is the data's negentropy D(p ‖ g), if the grid spans
        the scales of the data's structure."""
        sigma, rate = self.structure_rate()
        per_bin = rate * self.bin_width
        return sigma, per_bin.flip(0).cumsum(0).flip(0) - 0.5 * per_bin

    def structure_fraction(self):
        """α ∈ [0, 1]: how much non-Gaussian structure the profile measures, as a 0-d float64 tensor on
        its device (no host sync), to draw σ from the profile with probability α and from a base
        distribution otherwise.

        With N the estimated negentropy (the structure rate integrated over the grid, nats) and
        t = N/(structure_nats · d) clamped to [0, 1], α = 3t² − 2t³: 0 without a spectrum, while
        uninitialised, and while N ≤ 0 (the model no better than the Wiener filter); flat at 0, so noise
        in a near-zero N hardly moves it; 1 from `structure_nats` nats per dimension on. Per dimension
        (d = len(spectrum)) because both the negentropy and the noise of its estimate grow with d.
        A trained model's error is at least the mmse, so N is biased low: α rises as the model learns.
        """
        if self.spectrum is None:
            return self.mmse_estimate.new_zeros(())
        negentropy = (self.structure_rate()[1] * self.bin_width).sum()
        t = (negentropy / (self.structure_nats * len(self.spectrum))).nan_to_num(0.0).clamp(0, 1)
        return t * t * (3 - 2 * t)

    def _weight(self, kind):
        """Unnormalised density per log σ at the bin centres (DENSITIES): mmse/σ² (entropic), mmse/σ
        (rescaled), max(lmmse − mmse, 0)/σ² (structure) or max(lmmse − mmse, 0)/σ (rescaled-structure;
        both NaN without a spectrum)."""
        return DENSITIES[kind](self, self.sigma_grid)

    def _gate(self, sigma):
        """g(σ) = σⁿ/(σⁿ + cⁿ), or 1 without a gate."""
        if self.gate_c is None:
            return torch.ones_like(sigma)
        return torch.sigmoid(self.gate_n * (sigma.log() - math.log(self.gate_c)))

    def _knots(self, weight, floor):
        """Cumulative mass [num_bins + 1] at the bin edges, 0 to 1, of the density per log σ that is
        ∝ `weight` [num_bins] in each bin, mixed with `floor` × log-uniform. Without usable weight
        (all zero, or NaN: uninitialised) the density is log-uniform."""
        weight = weight.nan_to_num(0.0, 0.0, 0.0).clamp_min(0)
        total = weight.sum()
        mass = torch.where(total > 0, weight / total.clamp_min(1e-300), 1.0 / self.num_bins)
        mass = (1 - floor) * mass + floor / self.num_bins
        knots = torch.cat([mass.new_zeros(1), mass.cumsum(0)])
        return knots / knots[-1]  # exactly 1 at the top despite rounding

    # ----------------------------------------------------------------------------------------------
    # Noise levels from the profile.

    def sample(self, n, generator=None, device=None):
        """σ [n] (float32) from the mixed density (class docstring), by inverse CDF with one uniform per
        sample, on `device` (default: the profile's; `generator` must live there) without host sync."""
        device = self.cdf_knots.device if device is None else device
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return _interp(u, self.cdf_knots.to(device), self.log_edges.to(device)).exp().float()

    def cdf(self, sigma):
        """P(σ' ≤ sigma) under the density `sample` draws from, float64 on sigma's device."""
        log_sigma = sigma.to(self.cdf_knots.device, torch.float64).log()
        return _interp(log_sigma, self.log_edges, self.cdf_knots).clamp(0, 1).to(sigma.device)

    def log_density(self, sigma):
        """log p(log σ) of the density `sample` draws from: per log σ (not per σ), −inf off the grid.
        For importance weights: exp(log p_target(log σ) − log_density(σ))."""
        log_sigma = sigma.to(self.cdf_knots.device, torch.float64).log()
        position = (log_sigma - self.log_sigma_min) / self.bin_width
        inside = (position > -ON_GRID_SLACK) & (position < self.num_bins + ON_GRID_SLACK)
        mass = self.cdf_knots.diff()[position.nan_to_num(0.0).clamp(0, self.num_bins - 1).long()]
        value = torch.where(inside, (mass / self.bin_width).log(), -math.inf)
        return value.to(sigma.device, sigma.dtype)

    def sigmas(self, num_steps, kind='rescaled', sigma_min=None, sigma_max=None, final_denoise=True):
        """A sampler discretisation uniform in entropic or rescaled entropic time (arXiv 2504.13612), or
        in destroyed structure.

        The time τ(σ) is the normalised integral of the piecewise-constant density per log σ ∝ mmse/σ²
        ('entropic'), mmse/σ ('rescaled'), max(lmmse − mmse, 0)/σ² ('structure') or max(lmmse − mmse, 0)/σ
        ('rescaled-structure') over the grid, no gate,
        with a TIME_FLOOR log-uniform share so that it rises strictly even where the rate vanishes; linear
        in log σ beyond the grid. num_steps + 1 times τ_j uniform between τ(sigma_max) and τ(sigma_min)
        (default: the grid's ends) are mapped back to σ; the num_steps from sigma_max down are the noise
        levels, and the last step lands on 0 (the denoiser's output) from the level 1/num_steps of the
        time above sigma_min (a denoising last step), never visiting sigma_min. With final_denoise=False
        (the discretisation before issue #37) num_steps times span the range and the last level is
        sigma_min: on MNIST the long step from ~0.3 down to it leaves speckle under Heun, whose
        correction there divides the denoiser's error by sigma_min.
        Returns float64 [num_steps + 1] on the profile's device: strictly decreasing from sigma_max, then
        0. A profile without usable rate gives the log-linear spacing.
        """
        sigma_min = self.sigma_min if sigma_min is None else float(sigma_min)
        sigma_max = self.sigma_max if sigma_max is None else float(sigma_max)
        if not (isinstance(num_steps, int) and num_steps >= 2):
            raise ValueError(f'num_steps: expected an integer >= 2, got {num_steps!r}')
        if kind not in DENSITIES:
            raise ValueError(f'kind: expected one of {tuple(DENSITIES)}, got {kind!r}')
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f'sigma_min, sigma_max: expected 0 < sigma_min < sigma_max < inf, '
                             f'got {sigma_min}, {sigma_max}')
        time = self._knots(self._weight(kind), TIME_FLOOR)
        ends = _interp(torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=time.device).log(),
                       self.log_edges, time)
        levels = num_steps + 1 if final_denoise else num_steps
        ramp = torch.linspace(0, 1, levels, dtype=torch.float64, device=time.device)[:num_steps]
        sigma = _interp(ends[0] + (ends[1] - ends[0]) * ramp, time, self.log_edges).exp()
        sigma[0] = sigma_max
        if not final_denoise:
            sigma[-1] = sigma_min
        return torch.cat([sigma, sigma.new_zeros(1)])

    # ----------------------------------------------------------------------------------------------
    # Offline estimate.

    @classmethod
    def from_denoiser(cls, denoiser, sample_data, sigma_min=0.002, sigma_max=80.0, num_points=128,
                      samples_per_point=1024, generator=None, batch_size=8192, spectrum=None, **kwargs):
        """The profile of `denoiser` (x, σ [n]) -> x0_hat measured at `num_points` σ, log-spaced over
        [sigma_min, sigma_max] as the centres of as many bins, `samples_per_point` noisy samples each
        (as in arXiv 2504.13612). `sample_data`: a callable n -> x0 [n, ...], or a tensor of data points
        drawn from with replacement. `generator` draws the noise (and the points of a tensor) on the
        data's device. `spectrum`: the data covariance's eigenvalues, or True to estimate them from
        `sample_data` (as many points as the profile draws, or all of a tensor). `kwargs` go to the
        constructor (min_count at most samples_per_point)."""
        profile = cls(sigma_min, sigma_max, num_bins=num_points, **kwargs)
        if profile.min_count > samples_per_point:
            raise ValueError(f'min_count: {profile.min_count} exceeds samples_per_point ({samples_per_point}), '
                             'starving every bin')
        total = num_points * samples_per_point
        with torch.no_grad():
            if spectrum is True:
                spectrum = covariance_spectrum(sample_data, total if callable(sample_data) else None, batch_size)
            profile.set_spectrum(spectrum)
            for start in range(0, total, batch_size):
                n = min(batch_size, total - start)
                if callable(sample_data):
                    x0 = sample_data(n)
                else:
                    index = torch.randint(len(sample_data), (n,), generator=generator, device=sample_data.device)
                    x0 = sample_data[index]
                point = torch.arange(start, start + n, device=profile.ema_sum.device) // samples_per_point
                sigma = profile.sigma_grid[point].to(x0.device, x0.dtype)
                noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                denoised = denoiser(x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise, sigma)
                profile.update(sigma, (denoised.double() - x0.double()).square().flatten(1).sum(1))
        profile.refresh()
        return profile


def profile_kwargs(noise, dim):
    """How the config's `noise` section shapes an `EntropyProfile`'s σ density, for data of `dim` dimensions."""
    return dict(floor=noise.floor, gate_c=noise.gate_c, gate_n=noise.gate_n, density=noise.density, dim=dim,
                structure_nats=noise.structure_nats)


def build_profile(noise, dim):
    """An empty `EntropyProfile` of the config's `noise` section (grid, running-mean decay and density)."""
    return EntropyProfile(sigma_min=noise.sigma_min, sigma_max=noise.sigma_max, num_bins=noise.num_bins,
                          ema_decay=noise.profile_decay, **profile_kwargs(noise, dim))
