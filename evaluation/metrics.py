"""Sample-quality metrics between point clouds x [n, d] and y [m, d], in plain torch (float64 inside).

- `sliced_wasserstein`: sliced 2-Wasserstein distance, in the data's units.
- `mmd`: unbiased squared maximum mean discrepancy with a sum of RBF kernels (dimensionless).
- `mixture_nll`: mean exact negative log-likelihood under a `GaussianMixture`, in nats.
"""

import torch


def _wasserstein_1d(x, y):
    """Exact squared W2 between the empirical distributions of the columns of x [n, P] and y [m, P]: [P].

    W2² = ∫₀¹ (F⁻¹(q) − G⁻¹(q))² dq with both quantile functions piecewise constant; they only
    change at the levels i/n and j/m, so the integral is a weighted sum over those intervals.
    """
    n, m = len(x), len(y)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64, device=x.device) / n,
                        torch.arange(1, m + 1, dtype=torch.float64, device=x.device) / m]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middle = levels - widths / 2
    x_quantiles = x.sort(dim=0).values[(middle * n).long().clamp(max=n - 1)]
    y_quantiles = y.sort(dim=0).values[(middle * m).long().clamp(max=m - 1)]
    return widths @ (x_quantiles - y_quantiles).square()


def sliced_wasserstein(x, y, num_projections=512, generator=None):
    """Sliced 2-Wasserstein distance sqrt(E_u W2²(uᵀx, uᵀy)) over `num_projections` random unit
    directions u drawn with `generator` (on its device; the same directions for the same seed).
    Same units as the data; n != m is fine. For a shift a of one distribution in d dimensions it is
    |a|/√d."""
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).to(x)
    device = generator.device if generator is not None else x.device
    directions = torch.randn(x.shape[1], num_projections, generator=generator, device=device, dtype=torch.float64)
    directions = (directions / directions.norm(dim=0)).to(x.device)
    return _wasserstein_1d(x @ directions, y @ directions).mean().sqrt().item()


def _kernel_sum(a, b, bandwidths, chunk_size=1024):
    """Σ_ij k(a_i, b_j) for k(u, v) = Σ_h exp(−‖u − v‖²/(2h²)), in row chunks of a to bound memory."""
    total = 0.0
    for rows in a.split(chunk_size):
        sq_dist = torch.cdist(rows, b).square_()
        total += sum((sq_dist * (-0.5 / h ** 2)).exp_().sum().item() for h in bandwidths)
    return total


def mmd(x, y, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0)):
    """Unbiased MMD² between x [n, d] and y [m, d] (n, m >= 2) with k = Σ_h exp(−‖u − v‖²/(2h²)).

    `bandwidths` are in the data's units (the defaults suit data of about unit scale); the result is
    dimensionless, between −2·len(bandwidths) and 2·len(bandwidths), ≈ 0 (either sign) when x and y
    come from the same distribution.
    """
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).to(x)
    n, m, k = len(x), len(y), len(bandwidths)
    # The unbiased estimate leaves out the diagonal terms k(x_i, x_i) = len(bandwidths).
    xx = (_kernel_sum(x, x, bandwidths) - n * k) / (n * (n - 1))
    yy = (_kernel_sum(y, y, bandwidths) - m * k) / (m * (m - 1))
    xy = _kernel_sum(x, y, bandwidths) / (n * m)
    return xx + yy - 2 * xy


def mixture_nll(mixture, x):
    """Mean exact negative log-likelihood −log p(x) of samples x [n, d] under a `GaussianMixture`, nats."""
    return -mixture.log_prob(x.to(mixture.device, torch.float64)).mean().item()


def sample_metrics(x, reference, mixture=None, generator=None):
    """{'swd', 'mmd'} of samples x against reference samples, plus 'nll' when the data's mixture is known."""
    metrics = {'swd': sliced_wasserstein(x, reference, generator=generator), 'mmd': mmd(x, reference)}
    if mixture is not None:
        metrics['nll'] = mixture_nll(mixture, x)
    return metrics
