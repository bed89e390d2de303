"""Denoiser networks: EDM preconditionings, the 2D MLP, the DDPM++ and EDM2 (magnitude-preserving)
UNets. Each network and each preconditioning is a builder registered by name (NETWORKS, PRECONDS),
which the config's `network.name` and `precond.name` accept."""

from . import mp_unet, unet
from .mlp import MLP
from .precond import EDMPrecond, Precond, VEPrecond, VPPrecond

# Named sizes of the image networks (network.preset).
PRESETS = {'unet': unet.CONFIGS, 'mp-unet': mp_unet.CONFIGS}

# name -> builder(network_config, shape, num_classes) of the raw network F, for data of per-sample
# `shape` ([d] points or [C, H, W] images) with `num_classes` labels (0: unconditional).
NETWORKS = {}
# name -> builder(raw network, precond_config) of the preconditioned denoiser D(x; σ).
PRECONDS = {
    'edm': lambda model, precond: EDMPrecond(model, sigma_data=precond.sigma_data),
    'vp': lambda model, precond: VPPrecond(model),
    've': lambda model, precond: VEPrecond(model),
}


def register_network(name):
    def add(builder):
        NETWORKS[name] = builder
        return builder
    return add


@register_network('mlp')
def mlp(network, shape, num_classes=0):
    return MLP(dim=shape[0], width=network.width, depth=network.depth, num_freqs=network.num_freqs)


def _preset(network):
    """The preset's keyword arguments, with the config's overrides."""
    kwargs = dict(PRESETS[network.name][network.preset])
    if network.dropout is not None:
        kwargs['dropout'] = network.dropout
    return kwargs


@register_network('unet')
def ddpmpp_unet(network, shape, num_classes=0):
    return unet.UNet(**{**_preset(network), 'img_resolution': shape[-1], 'in_channels': shape[0], 'label_dim': num_classes})


@register_network('mp-unet')
def magnitude_preserving_unet(network, shape, num_classes=0):
    # No log-variance head unless the loss uses it: a head without gradient stops DDP at its second step.
    head = {} if network.learned_weighting else {'logvar_channels': 0}
    return mp_unet.MPUNet(**{**_preset(network), 'img_resolution': shape[-1], 'img_channels': shape[0],
                             'label_dim': num_classes, **head})


def build_denoiser(network, precond, shape, num_classes=0):
    """The preconditioned denoiser D(x; σ) for a `NetworkConfig` and a `PrecondConfig`."""
    return PRECONDS[precond.name](NETWORKS[network.name](network, shape, num_classes), precond)
