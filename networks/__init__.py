"""Denoiser networks: EDM preconditionings, the 2D MLP, exact (analytic) denoisers."""

from .mlp import MLP
from .precond import EDMPrecond, Precond, VEPrecond, VPPrecond

PRECONDS = {'edm': EDMPrecond, 'vp': VPPrecond, 've': VEPrecond}
NETWORKS = {'mlp': MLP}


def build_denoiser(network, precond, dim):
    """The preconditioned denoiser D(x; σ) for a `NetworkConfig` and a `PrecondConfig`."""
    model = NETWORKS[network.name](dim=dim, width=network.width, depth=network.depth,
                                   num_freqs=network.num_freqs)
    if precond.name == 'edm':
        return EDMPrecond(model, sigma_data=precond.sigma_data)
    return PRECONDS[precond.name](model)
