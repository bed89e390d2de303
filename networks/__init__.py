"""Denoiser networks: EDM preconditionings, the 2D MLP, the DDPM++ and EDM2 (magnitude-preserving)
UNets, exact (analytic) denoisers."""

from . import mp_unet, unet
from .mlp import MLP
from .precond import EDMPrecond, Precond, VEPrecond, VPPrecond

PRECONDS = {'edm': EDMPrecond, 'vp': VPPrecond, 've': VEPrecond}
# Named sizes of the image networks (network.preset).
PRESETS = {'unet': unet.CONFIGS, 'mp-unet': mp_unet.CONFIGS}


def build_network(network, shape, num_classes=0):
    """The raw network F of a `NetworkConfig` for data of per-sample `shape` ([d] points or
    [C, H, W] images) with `num_classes` labels (0: unconditional)."""
    if network.name == 'mlp':
        return MLP(dim=shape[0], width=network.width, depth=network.depth, num_freqs=network.num_freqs)
    channels, resolution = shape[0], shape[-1]
    kwargs = dict(PRESETS[network.name][network.preset])
    if network.dropout is not None:
        kwargs['dropout'] = network.dropout
    if network.name == 'unet':
        return unet.UNet(**{**kwargs, 'img_resolution': resolution, 'in_channels': channels, 'label_dim': num_classes})
    return mp_unet.MPUNet(**{**kwargs, 'img_resolution': resolution, 'img_channels': channels, 'label_dim': num_classes})


def build_denoiser(network, precond, shape, num_classes=0):
    """The preconditioned denoiser D(x; σ) for a `NetworkConfig` and a `PrecondConfig`."""
    model = build_network(network, shape, num_classes)
    if precond.name == 'edm':
        return EDMPrecond(model, sigma_data=precond.sigma_data)
    return PRECONDS[precond.name](model)
