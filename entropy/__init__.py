"""Conditional entropy of the EDM forward process x = x0 + σ·ε, plain torch: the entropy profile
estimated from denoising errors (`profile`), the data covariance spectrum and the Wiener filter's
error (`spectrum`), the surrogate schedule fitted to a solver (`surrogate`), and the I-MMSE likelihood bound (`likelihood`). docs/entropic_time.md has the theory."""

from .likelihood import PIXEL_STEP, bits_per_dim, image_bits_per_dim, nll
from .profile import DENSITIES, PROFILE_SCHEDULES, STRUCTURE_DENSITIES, EntropyProfile, build_profile, profile_kwargs
from .spectrum import covariance_spectrum, lmmse
from .surrogate import SURROGATE_SCHEDULE, surrogate_error, surrogate_sigmas
