"""The data's covariance spectrum and the error of the best linear denoiser.

The Wiener filter D(x; σ) = μ + C(C + σ²I)⁻¹(x − μ) is the best denoiser linear in x; its error
    lmmse(σ) = tr(C − C(C + σ²I)⁻¹C) = Σ_i λ_i σ²/(λ_i + σ²)
(λ_i: eigenvalues of C = Cov(x0)) is the mmse of a Gaussian with the data's covariance. The optimal
denoiser E[x0 | x] never does worse: mmse(σ) ≤ lmmse(σ), with equality for Gaussian data.
"""

import torch


def covariance_spectrum(sample_data, num_samples=None, batch_size=8192):
    """Eigenvalues of Cov(x0) [d], float64, descending, clamped at 0, in data units squared.

    `sample_data`: a callable n -> x0 [n, ...] (then `num_samples` points are drawn), or a tensor of
    data points (its first `num_samples`, default all). Points are flattened to d = their number of
    elements and streamed in batches of `batch_size`; the per-batch centred sums are merged in float64
    by the pairwise update of Chan, Golub and LeVeque (1979), so a large mean costs no precision.
    Holds a d × d matrix; computed on the data's device. Fewer points n than dimensions d are held
    whole instead, and their n × n Gram matrix gives the same nonzero eigenvalues at a cost of n²d
    rather than nd² + d³ (the other d − n + 1 are 0): `noise.spectrum_samples` bounds the cost at 64 px.
    """
    if callable(sample_data) and num_samples is None:
        raise ValueError('num_samples: required when sample_data is a callable')
    if not callable(sample_data):
        num_samples = len(sample_data) if num_samples is None else min(num_samples, len(sample_data))
    if not num_samples >= 2:
        raise ValueError(f'num_samples: expected at least 2 points, got {num_samples}')
    batches = ((sample_data(n) if callable(sample_data) else sample_data[start:start + n]).reshape(n, -1).double()
               for start in range(0, num_samples, batch_size) for n in [min(batch_size, num_samples - start)])
    first = next(batches)
    if num_samples < first.shape[1]:
        return _gram_spectrum(torch.cat([first, *batches]))
    count, mean, scatter = 0, 0.0, 0.0  # scatter: Σ (x − mean)(x − mean)ᵀ over the points so far
    for x in (first, *batches):
        n = len(x)
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta, total = batch_mean - mean, count + n
        scatter = scatter + centred.T @ centred + torch.outer(delta, delta) * (count * n / total)
        mean, count = mean + delta * (n / total), total
    return torch.linalg.eigvalsh(scatter / (count - 1)).flip(0).clamp_min(0)


def _gram_spectrum(x):
    """`covariance_spectrum` of the points x [n, d], n < d: XᵀX and XXᵀ (X centred) share their nonzero eigenvalues."""
    centred = x - x.mean(0)
    nonzero = torch.linalg.eigvalsh(centred @ centred.T / (len(x) - 1)).flip(0).clamp_min(0)
    return torch.cat([nonzero, nonzero.new_zeros(x.shape[1] - len(x))])


def lmmse(sigma, eigenvalues):
    """Σ_i λ_i σ²/(λ_i + σ²): the Wiener filter's squared error at noise level σ (> 0; float or tensor
    of any shape), in data units squared summed over dimensions, float64 of σ's shape, on the
    eigenvalues' device. `eigenvalues` [d]: of Cov(x0), as from `covariance_spectrum`."""
    var = torch.as_tensor(sigma, dtype=torch.float64, device=eigenvalues.device).unsqueeze(-1) ** 2
    return (eigenvalues * var / (eigenvalues + var)).sum(-1)
