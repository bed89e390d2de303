"""A trained model ready to sample, in plain torch: no Lightning, no training data, no spectrum to draw.

    from sampling_model import load_model
    model = load_model('runs/quickstart/checkpoints/last.ckpt')   # EMA weights, on cuda if available
    x = model.sample(1000)                                          # the config's sampler: 18-step Heun, ρ = 7

A checkpoint carries what sampling needs (the EMA and raw weights, the network, preconditioning, data
and `sample` sections of the config, the data shape and number of classes, the entropy profile);
`load_model` rebuilds the denoiser from it, like EDM's `generate.py` from its snapshot pickles. The
training data is built only where a caller asks for it (`dataset`: reference samples, the exact
mixture, an offline profile). The training module samples its figures through the same class.
"""

import copy
import math
import os
import sys
import time
from pathlib import Path

import torch

import sampling
from checkpoint_file import read_checkpoint, weights_fingerprint
from entropy import (PROFILE_SCHEDULES, SURROGATE_SCHEDULE, EntropyProfile, build_profile, profile_kwargs,
                     surrogate_sigmas)
from errors import CheckpointError, first_line
from files import save_atomically
from networks import build_denoiser
from sampling import optimized


# `class_label` of `SamplingModel.sample`: one uniformly random class per sample, drawn from the sample's own
# stream after its initial noise, as NVlabs/edm's generate.py draws a class per seed.
RANDOM_CLASS = 'random'


class SamplingModel:
    """`denoiser`: the EMA (or post-hoc EMA) denoiser D(x; σ); `raw_denoiser`: the trained weights;
    `profile`: the entropy profile the entropic schedules read; `shape`: one sample's shape ([d] points
    or [C, H, W] images); `num_classes`: labels of a class-conditional network (0: none)."""

    def __init__(self, config, denoiser, raw_denoiser, profile, shape, num_classes, dataset=None, posthoc_state=None,
                 path=None):
        self.config, self.denoiser, self.raw_denoiser, self.profile = config, denoiser, raw_denoiser, profile
        self.shape, self.num_classes = tuple(shape), num_classes
        self._dataset, self._posthoc_state = dataset, posthoc_state
        self.path = path  # the checkpoint file: the optimised schedules' local errors are cached beside it
        self._local_errors, self._teacher_cache = {}, None

    @property
    def device(self):
        return next(self.denoiser.parameters()).device

    def to(self, device):
        for part in (self.denoiser, self.raw_denoiser, self.profile):
            part.to(device)
        if self._dataset is not None:
            self._dataset.to(device)
        return self

    @property
    def dataset(self):
        """The training data (built on first use: reference samples, the exact mixture, offline profiles)."""
        if self._dataset is None:
            from datasets import build_dataset
            self._dataset = build_dataset(self.config.data).to(self.device)
        return self._dataset

    @property
    def is_image_model(self):
        return len(self.shape) == 3

    @property
    def posthoc_folder(self):
        return Path(self.config.run_dir or '.') / 'posthoc-ema'

    def use_posthoc_ema(self, sigma_rel):
        """Replace the EMA weights by the power-function EMA of relative width `sigma_rel`
        reconstructed from the run's snapshots (EDM2, Algorithm 3, through ema-pytorch)."""
        from ema_pytorch import PostHocEMA
        if self._posthoc_state is None:
            raise ValueError('sigma_rel: this run kept no post-hoc EMA (ema.posthoc: false)')
        if not list(self.posthoc_folder.glob('*.pt')):
            raise ValueError(f'sigma_rel: no post-hoc EMA snapshots in {self.posthoc_folder}')
        posthoc = PostHocEMA(copy.deepcopy(self.raw_denoiser), sigma_rels=tuple(self.config.ema.posthoc_sigma_rels),
                             checkpoint_every_num_steps='manual', checkpoint_folder=str(self.posthoc_folder),
                             checkpoint_dtype=torch.float32)
        posthoc.load_state_dict(self._posthoc_state)
        self.denoiser = posthoc.synthesize_ema_model(sigma_rel=sigma_rel).ema_model.to(self.device).eval()

    def sampling_denoiser(self, use_ema=True, class_label=None, guidance=1.0, n=None):
        """The denoiser (x, σ) -> x0_hat that sampling uses: EMA or raw weights; for a class-conditional
        network, conditioned on `class_label` (an int for all `n` samples, a tensor [n] of one class per
        sample, or None: unconditional) and guided with weight `guidance` (0: unconditional, 1:
        conditional; `sampling.guided`)."""
        denoiser = self.denoiser if use_ema else self.raw_denoiser
        if not torch.is_tensor(class_label):
            self.check_class_label(class_label)
        if not self.num_classes:
            return denoiser
        if n is None:  # unconditional, for batches of any size (`estimate_profile`)
            if class_label is not None:
                raise ValueError('sampling_denoiser: a class needs the batch size n')
            return lambda x, sigma: denoiser(x, sigma, x.new_zeros(len(x), self.num_classes))
        labels = torch.zeros(n, self.num_classes, device=self.device)
        if class_label is not None:
            labels[torch.arange(n, device=self.device), class_label] = 1
        return sampling.guided(denoiser, labels, guidance if class_label is not None else 0.0)

    def check_class_label(self, class_label):
        """ValueError unless `class_label` is None, or a class (or RANDOM_CLASS) of this class-conditional model."""
        if class_label is None:
            return
        if not self.num_classes:
            raise ValueError('this model is not class-conditional (network.class_conditional: false)')
        if class_label == RANDOM_CLASS:
            return
        if isinstance(class_label, str) or not 0 <= class_label < self.num_classes:
            raise ValueError(f'must be in 0..{self.num_classes - 1} (got {class_label})')

    def sigmas(self, steps=None, schedule=None, sigma_min=None, sigma_max=None, rho=None, solver=None):
        """The sampler's σ discretisation (decreasing, ending in 0); defaults from the config. `solver`
        matters only to the surrogate schedule, which is fitted for it."""
        s = self.config.sample
        kwargs = {'sigma_min': sigma_min or s.sigma_min, 'sigma_max': sigma_max or s.sigma_max}
        schedule = schedule or s.schedule
        if schedule in optimized.OPTIMIZED_SCHEDULES:
            return self.optimized_sigmas(steps or s.steps, schedule, solver or s.solver, **kwargs)
        if schedule == SURROGATE_SCHEDULE:
            return surrogate_sigmas(self.profile, steps or s.steps, solver or s.solver, **kwargs)
        if schedule in PROFILE_SCHEDULES:
            return self.profile.sigmas(steps or s.steps, kind=PROFILE_SCHEDULES[schedule], **kwargs)
        if schedule == 'karras':
            kwargs['rho'] = rho or s.rho
        elif schedule == 'vp':
            kwargs = {}
        return sampling.get_sigmas(schedule, steps or s.steps, **kwargs)

    @property
    def optimizer_cache(self):
        """Where the optimised schedules' local errors are kept: beside the checkpoint (None: in memory only)."""
        return None if self.path is None else Path(f'{self.path}.optimized.pt')

    def optimized_sigmas(self, steps, schedule='optimized', solver='heun', sigma_min=None, sigma_max=None):
        """The schedule of `steps` steps optimised for this model's sampling denoiser (the EMA weights,
        guidance 1, one random class per sample) and `solver` by `sampling.optimized`: 'optimized' (GITS's
        dynamic programming on local errors) or 'optimized-entropic' (the errors weighted by the entropy
        profile). The local errors are computed once per weights, solver and σ range, printed with their
        cost, and cached beside the checkpoint; any number of steps is then free."""
        s = self.config.sample
        sigma_min, sigma_max = sigma_min or s.sigma_min, sigma_max or s.sigma_max
        grid, errors = self.local_errors(solver, sigma_min, sigma_max)
        weights = None
        if schedule == 'optimized-entropic':
            sigma, mmse = self.profile.mmse()
            measured = torch.isfinite(mmse)  # bins without enough errors yet are NaN
            if measured.sum() < 2:
                raise ValueError('optimized-entropic: the entropy profile was never refreshed (no training step); '
                                 'use --schedule optimized or --estimate-profile')
            weights = optimized.entropy_weights(grid, sigma[measured].cpu(), mmse[measured].cpu(), math.prod(self.shape))
        elif schedule != 'optimized':
            raise ValueError(f"schedule: expected one of {', '.join(optimized.OPTIMIZED_SCHEDULES)} (got {schedule!r})")
        return optimized.dp_schedule(errors, grid, steps, weights)

    def local_errors(self, solver, sigma_min, sigma_max):
        """(grid, local errors) of `sampling.optimized` for `solver`: from memory, the cache file, or computed."""
        optimized.check_solver(solver)  # before the teacher's minutes
        grid = optimized.grid_sigmas(sigma_min, sigma_max)
        fingerprint = weights_fingerprint(self.denoiser.state_dict())
        key = (f'{fingerprint} {solver} {sigma_min:g} {sigma_max:g} '
               f'grid {len(grid) - 1} substeps {optimized.SUBSTEPS} samples {optimized.NUM_SAMPLES}')
        if key in self._local_errors:
            return grid, self._local_errors[key]
        cache = self.optimizer_cache
        stored = torch.load(cache, map_location='cpu', weights_only=True) if cache and cache.exists() else {}
        if key not in stored:
            teacher = self._teacher(fingerprint, grid)
            start = time.perf_counter()
            errors, nfe = optimized.local_errors(self.denoiser_for_optimizer(teacher.num_samples), teacher, solver)
            seconds = time.perf_counter() - start
            n = teacher.num_samples
            print(f'optimized schedules for {solver}: {n} teacher trajectories × {teacher.nfe} NFE ({teacher.seconds:.0f} s, '
                  f'shared by the solvers), then {n} × {nfe} NFE for the local errors ({seconds:.0f} s); '
                  f'cached in {cache or "memory"}', file=sys.stderr)
            if cache:  # read again: another process may have added a solver meanwhile
                stored = torch.load(cache, map_location='cpu', weights_only=True) if cache.exists() else {}
                save_atomically({**stored, key: errors}, cache)
            stored[key] = errors
        self._local_errors[key] = stored[key].to(torch.float64)
        return grid, self._local_errors[key]

    def denoiser_for_optimizer(self, n, seed=0):
        """The sampling denoiser the optimiser follows: EMA weights, for a class-conditional model one
        uniformly random class per trajectory (seeded) at guidance 1."""
        labels = None
        if self.num_classes:
            generator = torch.Generator(device=self.device).manual_seed(seed + 1)
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        return self.sampling_denoiser(True, labels, 1.0, n)

    def _teacher(self, fingerprint, grid):
        """The teacher trajectories of these weights on `grid` (kept in memory for the other solvers)."""
        if self._teacher_cache is not None and self._teacher_cache[0] == (fingerprint, tuple(grid.tolist())):
            return self._teacher_cache[1]
        noise = torch.randn(optimized.NUM_SAMPLES, *self.shape, generator=torch.Generator(device=self.device).manual_seed(0),
                            device=self.device)
        teacher = optimized.teacher_trajectories(self.denoiser_for_optimizer(len(noise)), noise, grid.to(self.device))
        self._teacher_cache = ((fingerprint, tuple(grid.tolist())), teacher)
        return teacher

    @torch.no_grad()
    def estimate_profile(self, use_ema=True, num_points=128, samples_per_point=1024, seed=0):
        """Replace the training-time profile by an offline estimate (arXiv 2504.13612): the sampling
        denoiser's errors on fresh training data at `num_points` σ spaced in log σ (a class-conditional
        network's unconditional errors)."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        n = self.config.noise
        self.profile = EntropyProfile.from_denoiser(
            self.sampling_denoiser(use_ema), lambda k: self.dataset.sample(k, generator=generator),
            n.sigma_min, n.sigma_max, num_points=num_points, samples_per_point=samples_per_point,
            generator=generator, spectrum=self.profile.spectrum, **profile_kwargs(n, math.prod(self.shape)))
        return self.profile

    @torch.no_grad()
    def sample(self, n=None, steps=None, solver=None, schedule=None, seed=0, use_ema=True, callback=None,
               sigma_min=None, sigma_max=None, rho=None, seeds=None, class_label=None, guidance=1.0, **options):
        """Draw `n` samples [n, *shape] with the EMA weights (or the raw ones, `use_ema=False`);
        of class `class_label` with guidance weight `guidance` for class-conditional networks:
        an int, None (unconditional) or RANDOM_CLASS (one class per sample, from its own stream).

        Defaults come from the config's `sample` section (18-step Heun on the ρ=7 schedule);
        `seed` fixes the initial noise and any stochastic steps. With `seeds` (a sequence of ints)
        instead of `n`, sample i comes from its own stream seeded by seeds[i] (EDM's seed ranges), the
        same whatever the batch it is drawn in. `options` go to the solver (e.g. S_churn for heun,
        eta for ddim).
        """
        if (n is None) == (seeds is None):
            raise ValueError('sample: give either n or seeds')
        if seeds is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            noise = torch.randn(n, *self.shape, generator=generator, device=self.device)
        else:
            generator = sampling.SeedGenerator(seeds, self.device)
            noise = generator.randn((len(generator), *self.shape), device=self.device)
        sigmas = self.sigmas(steps, schedule, sigma_min, sigma_max, rho, solver).to(self.device)
        if isinstance(class_label, str):
            self.check_class_label(class_label)
            class_label = (generator.randint(self.num_classes, device=self.device) if seeds is not None else
                           torch.randint(self.num_classes, (len(noise),), generator=generator, device=self.device))
        denoiser = self.sampling_denoiser(use_ema, class_label, guidance, len(noise))
        return sampling.sample(denoiser, noise, sigmas, solver or self.config.sample.solver,
                               generator=generator, callback=callback, **options)


def _ema_weights(ema_state):
    """The EMA network's weights out of ema-pytorch's EMA state (keys 'ema_model.*')."""
    return {name[len('ema_model.'):]: value for name, value in ema_state.items() if name.startswith('ema_model.')}


def _data_shape(meta, config):
    """(shape, number of labels) as stored; checkpoints written before they were stored build the dataset."""
    if 'data_shape' in meta:
        return meta['data_shape'], meta['num_classes']
    from datasets import build_dataset
    data = build_dataset(config.data)
    return data.shape, data.num_classes if config.network.class_conditional else 0


def process_device(device=None):
    """The torch.device of `device`, where None and a bare 'cuda' name this process's GPU: cuda:LOCAL_RANK
    when CUDA is available (one GPU per process under torchrun, as NVlabs/edm), else None names the cpu."""
    if (device is None or str(device) == 'cuda') and torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    return torch.device(device or 'cpu')


def load_model(path, device=None):
    """A `SamplingModel` from a cedm checkpoint: `load_model(p).sample(1000)`. On `device` (default:
    `process_device`'s, cuda:LOCAL_RANK when available). Raises CheckpointError with a one-line reason for missing, corrupt or
    foreign files."""
    checkpoint, config = read_checkpoint(path)
    meta = checkpoint['cedm']
    try:
        shape, num_classes = _data_shape(meta, config)
        raw = build_denoiser(config.network, config.precond, shape, num_classes)
        raw.load_state_dict({name[len('denoiser.'):]: value for name, value in checkpoint['state_dict'].items()})
        denoiser = copy.deepcopy(raw)
        denoiser.load_state_dict(_ema_weights(meta['ema']))
        profile = build_profile(config.noise, math.prod(shape))
        profile.load_state_dict(meta['profile'])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: its state does not match this version of cedm's model: {first_line(e)}") from None
    model = SamplingModel(config, denoiser.eval(), raw.eval(), profile, shape, num_classes,
                          posthoc_state=meta.get('posthoc_ema'), path=path)
    return model.to(process_device(device))
