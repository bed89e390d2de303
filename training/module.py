"""The LightningModule: EDM training of a preconditioned denoiser, with an EMA of its weights.

Data and σ are drawn inside `training_step` from per-rank generators (fresh samples every step,
no DataLoader work); the EMA lives outside the module tree so DDP never wraps, broadcasts or
reduces it, and travels in the checkpoint's 'cedm' entry with the config and generator states.
"""

import contextlib
import functools
import itertools
import json
import math
import os
from pathlib import Path

import lightning as L
import torch
from ema_pytorch import EMA, PostHocEMA

from datasets import build_dataset
from checkpoint_file import FORMAT_VERSION, state_dict_mismatch
from config import config_to_dict
from entropy import STRUCTURE_DENSITIES, build_profile, covariance_spectrum
from errors import CheckpointError, ConfigError, RunStopped, first_line
from evaluation import plots
from evaluation.metrics import sample_metrics
from evaluation.probe import probe_accuracy
from files import save_atomically
from networks import build_denoiser
from networks.mp_unet import uncertainty_weighted_loss
from sampling_model import SamplingModel

from . import rng
from .loss import edm_loss
from .noise import build_noise


class SigmaBins:
    """Running per-bin means of the training loss over log σ, for the loss-against-σ figure."""

    def __init__(self, sigma_min=1e-3, sigma_max=1e2, num_bins=25):
        self.log_sigma_min, self.num_bins = math.log(sigma_min), num_bins
        self.bin_width = (math.log(sigma_max) - self.log_sigma_min) / num_bins
        self.stats = torch.zeros(num_bins, 2, dtype=torch.float64)  # loss sums and counts

    def update(self, sigma, loss):
        self.stats = self.stats.to(sigma.device)
        index = ((sigma.detach().log() - self.log_sigma_min) / self.bin_width).nan_to_num(0.0).clamp(0, self.num_bins - 1).long()
        self.stats[:, 0] += torch.bincount(index, loss.detach().double(), minlength=self.num_bins)
        self.stats[:, 1] += torch.bincount(index, minlength=self.num_bins)

    def pop(self):
        """(bin centres, mean loss per bin with NaN where empty); resets the sums."""
        centres = torch.exp(self.log_sigma_min + self.bin_width * (torch.arange(self.num_bins) + 0.5))
        means = (self.stats[:, 0] / self.stats[:, 1]).cpu()
        self.stats.zero_()
        return centres, means


# Most training steps whose errors wait before they are binned (`EDMModule._bin_errors`).
BIN_EVERY = 100

# Set to 1 by `import lightning` so that torch.cuda.is_available() asks NVML (fork-safe) instead of
# the CUDA runtime; see `RuntimeCudaCheck`.
NVML_CHECK = 'PYTORCH_NVML_BASED_CUDA_CHECK'


@contextlib.contextmanager
def without_nvml_check():
    """Within: `torch.cuda.is_available()` asks the CUDA runtime, as it does without Lightning.

    torch's Adam calls it at every step. Under Lightning's NVML check, before CUDA is initialised
    (always, on a CPU run), every call opens libnvidia-ml anew and nothing is cached, where the
    runtime caches its answer (benchmarks/README.md, train_overhead). Lightning wants the NVML check so that looking for GPUs does not
    initialise CUDA in a process that forks its ranks later."""
    saved = os.environ.pop(NVML_CHECK, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[NVML_CHECK] = saved


class RuntimeCudaCheck(L.Callback):
    """A CPU run trains `without_nvml_check` (by `on_train_start` the ranks are running); the variable
    is given back at teardown or on an exception. `EDMModule.configure_callbacks` adds it to any Trainer."""

    def __init__(self):
        self.context = contextlib.ExitStack()

    def on_train_start(self, trainer, pl_module):
        if pl_module.device.type == 'cpu':  # on a GPU the device count is cached once CUDA is initialised
            self.context.enter_context(without_nvml_check())

    def teardown(self, trainer, pl_module, stage):
        self.context.close()

    def on_exception(self, trainer, pl_module, exception):
        self.context.close()


class NonFiniteError(RunStopped):
    """Too many optimizer steps in a row skipped for a non-finite loss or gradient."""


class EDMModule(L.LightningModule):
    def __init__(self, config, spectrum=True):
        """`spectrum=False` skips drawing the data's covariance spectrum: a checkpoint about to be
        loaded brings its own."""
        super().__init__()
        self.config = config
        self.dataset = build_dataset(config.data)
        self.num_classes = self.dataset.num_classes if config.network.class_conditional else 0
        t = config.trainer
        if t.probe and t.probe_train + t.probe_test > len(self.dataset):
            raise ConfigError(f'trainer.probe_train + trainer.probe_test: {t.probe_train + t.probe_test} images; '
                              f'{config.data.name} has {len(self.dataset)}')
        self.denoiser = build_denoiser(config.network, config.precond, self.dataset.shape, self.num_classes)
        e = config.ema
        # object.__setattr__ keeps the EMA out of the module tree (no DDP, no state_dict entry).
        object.__setattr__(self, 'ema', EMA(
            self.denoiser, beta=e.beta, power=e.power, update_after_step=e.update_after_step,
            update_every=e.update_every, include_online_model=False, use_foreach=True))
        self.ema.ema_model.eval()
        object.__setattr__(self, 'posthoc_ema', None)  # rank 0's alone, built in `setup`
        # The profile of the training errors: the σ distribution of `noise.name: entropic`, and the
        # entropic sampling schedules of every checkpoint. Outside the module tree like the EMA:
        # DDP's buffer broadcast would overwrite each rank's own pending statistics.
        object.__setattr__(self, 'profile', build_profile(config.noise, self.dataset.dim))
        # The data's covariance spectrum gives the profile its Gaussian (Wiener filter) error and so the
        # structure rate. Several processes draw it once, on rank 0, at the start of training (`_share_spectrum`).
        self._spectrum_due = spectrum and is_distributed(t)
        if spectrum and not self._spectrum_due:
            self.profile.set_spectrum(self._draw_spectrum())
        if config.noise.weighting == 'divide':  # InfoNoise: the σ density divided by the loss weight λ(σ)
            self.profile.set_loss_weight(self.denoiser.loss_weight(self.profile.sigma_grid))
        self.noise = build_noise(config.noise, self.profile)
        self.sigma_bins = SigmaBins()
        self._unbinned = []  # (step, σ, squared error, loss, skipped) of the steps since the last `_bin_errors`
        self.progress_metrics = {}  # what the progress bar shows beside Lightning's own
        self._rank_states = None  # per rank, from a checkpoint being resumed
        self.nonfinite_steps = 0    # skipped for a non-finite loss or gradient, over the whole run
        self._nonfinite_streak = []  # (step, σ of the offending samples) of each batch since the last good step
        self.stopped_by = None  # the NonFiniteError that stopped the run, raised once it has ended
        # Manual optimisation: one optimizer step per batch needs none of Lightning's closure
        # machinery, which cost about 10% of a toy step's time (benchmarks/train_overhead.py).
        self.automatic_optimization = False

    # ------------------------------------------------------------------ set-up
    def _place(self):
        """Move the pieces that live outside the module tree to the module's device."""
        self.ema.to(self.device)
        if self.posthoc_ema is not None:
            self.posthoc_ema.to(self.device)
        self.profile.to(self.device)
        self.dataset.to(self.device)

    @property
    def posthoc_folder(self):
        return Path(self.config.run_dir or '.') / 'posthoc-ema'

    def _draw_spectrum(self):
        """The data's covariance spectrum, from its own stream: the same in every process."""
        generator = rng.generator('cpu', self.config.seed, 2**16, 1)
        return covariance_spectrum(lambda k: self.dataset.sample(k, generator=generator), self.config.noise.spectrum_samples)

    def _share_spectrum(self):
        """Rank 0 draws the spectrum and hands it to the others (seconds to minutes of work done once)."""
        self.profile.set_spectrum(self.trainer.strategy.broadcast(self._draw_spectrum() if self.trainer.is_global_zero else None))
        self._spectrum_due = False

    def setup(self, stage):
        # Before a checkpoint is restored into it. Rank 0 alone updates and snapshots it, and writes files.
        e = self.config.ema
        if e.posthoc and self.trainer.is_global_zero and self.posthoc_ema is None:
            object.__setattr__(self, 'posthoc_ema', PostHocEMA(
                self.denoiser, sigma_rels=tuple(e.posthoc_sigma_rels), checkpoint_every_num_steps='manual',
                checkpoint_folder=str(self.posthoc_folder)))

    def _check_same_step(self):
        """ConfigError on every rank unless all continue from the same step: ranks that resumed different
        checkpoints (or where one started afresh) would meet in mismatched collectives and hang."""
        if self.trainer.world_size == 1:
            return
        steps = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(steps, self.global_step)
        if len(set(steps)) > 1:
            held = ', '.join(f'rank {rank}: step {step}' for rank, step in enumerate(steps))
            raise ConfigError(f'resume: the ranks start from different steps ({held}); every rank must resume the '
                              'same checkpoint (a run_dir on a file system that every node sees)')

    def on_train_start(self):
        # Here rather than in on_fit_start: some strategies restore a checkpoint after that hook.
        self._check_same_step()  # first: the other collectives of the start need every rank at one step
        if self._spectrum_due:
            self._share_spectrum()
        if self.device.type == 'cuda':
            configure_cuda(self.config.trainer.tf32)
        self._place()
        self._trained_parameters = list(self.denoiser.parameters())  # listed once, not walked every step
        # The EMAs' step counters, on the host: ema-pytorch's own `update` reads them from the device.
        self._ema_step, self._ema_tensors = int(self.ema.step), ema_tensors(self.ema)
        if self.posthoc_ema is not None:
            self._posthoc_step = int(self.posthoc_ema.step)
            self._posthoc_tensors = [ema_tensors(ema) for ema in self.posthoc_ema.ema_models]
            for path in self.posthoc_folder.glob('*.pt'):  # from beyond the checkpoint resumed (or a former run)
                if int(path.stem.split('.')[1]) > self.global_step:
                    path.unlink()
        rank, states = self.global_rank, self._rank_states
        self.data_generator = rng.generator(self.device, self.config.seed, rank, 0)
        self.sigma_generator = rng.generator(self.device, self.config.seed, rank, 1)
        # The process-wide streams (dropout) are each rank's own; the network was initialised alike before.
        rng.seed_global(self.config.seed, rank, 2)
        if states is not None and len(states) == self.trainer.world_size:  # continue every rank's streams
            self.data_generator.set_state(states[rank]['data'])
            self.sigma_generator.set_state(states[rank]['sigma'])
            if 'torch' in states[rank]:
                rng.set_global_state(states[rank])
            if 'profile_pending' in states[rank]:
                self.profile.pending_sum.copy_(states[rank]['profile_pending'][0])
                self.profile.pending_count.copy_(states[rank]['profile_pending'][1])
        elif states is not None:  # another number of ranks: fresh streams that do not replay the first steps
            self.data_generator = rng.generator(self.device, self.config.seed, rank, 0, self.global_step)
            self.sigma_generator = rng.generator(self.device, self.config.seed, rank, 1, self.global_step)
            rng.seed_global(self.config.seed, rank, 2, self.global_step)

    def train_dataloader(self):
        # Step indices only: the batch itself is generated on the device. A plain iterable, not a
        # DataLoader, whose iterator would draw from the global torch stream (which a resumed run
        # restores) and costs a profiled call every step.
        return itertools.count()

    def configure_callbacks(self):
        return [RuntimeCudaCheck()]

    def configure_optimizers(self):
        o = self.config.optim
        # Fused: it skips a step on the device when told of a non-finite gradient (`training_step`).
        optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=o.lr, betas=tuple(o.betas),
                                     weight_decay=o.weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            learning_rate_factor, warmup_steps=o.warmup_steps, ref_steps=o.ref_steps if o.schedule == 'edm2' else None))
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    # ------------------------------------------------------------------ training
    def _loss_terms(self, n):
        """A fresh batch of `n`: (σ, per-sample training loss, unweighted squared error), all [n]."""
        network = self.config.network
        if network.class_conditional:
            x0, labels = self.dataset.sample(n, generator=self.data_generator, labels=True)
            # Dropped labels (zeros) train the same network as the unconditional model of guidance.
            labels = labels * (torch.rand(n, generator=self.data_generator, device=self.device) >= network.label_dropout)[:, None]
        else:
            x0, labels = self.dataset.sample(n, generator=self.data_generator), None
        sigma = self.noise.sample(n, generator=self.sigma_generator, device=self.device)
        per_sample, sq_err = edm_loss(self.denoiser, x0, sigma, generator=self.data_generator, class_labels=labels)
        if network.learned_weighting:  # EDM2: per-σ uncertainty u(σ), loss L/e^u + u
            per_sample = uncertainty_weighted_loss(per_sample, self.denoiser.logvar(sigma))
        weight = self.noise.loss_weight(sigma)
        if weight is not None:
            per_sample = per_sample * weight
        return sigma, per_sample, sq_err

    def training_step(self, batch, batch_idx):
        per_rank, per_pass = batch_split(self.config.trainer, self.trainer.world_size)
        self.noise.step = self.global_step  # entropic σ: the warm-up is counted in optimizer steps
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        ddp = self.trainer.strategy.model
        parts = []
        for start in range(0, per_rank, per_pass):
            # Under DDP only the last pass all-reduces; the others accumulate locally.
            last = start + per_pass == per_rank
            with contextlib.nullcontext() if last or not hasattr(ddp, 'no_sync') else ddp.no_sync():
                sigma, per_sample, sq_err = self._loss_terms(per_pass)
                self.manual_backward(per_sample.sum() / per_rank)
            parts.append((sigma, per_sample.detach(), sq_err.detach()))
        sigma, per_sample, sq_err = parts[0] if len(parts) == 1 else (torch.cat(part) for part in zip(*parts))
        step = self.global_step  # the optimizer steps taken before this one
        scaler = getattr(self.trainer.precision_plugin, 'scaler', None)  # 16-mixed on a GPU
        if scaler is not None:  # the true gradients to check, measure and clip (Lightning would unscale them later)
            scaler.unscale_(optimizer.optimizer)
        grads = [p.grad for p in self._trained_parameters if p.grad is not None]
        # No host synchronisation: a batch with a non-finite loss or gradient is skipped on the device (fused
        # Adam leaves weights and moments as they were) and counted when the steps are settled (`_bin_errors`).
        # Under DDP the gradients are already averaged over ranks, but a loss can overflow on one rank alone:
        # the ranks share the finding, so all skip the same steps.
        skip = any_nonfinite(grads + [per_sample], across_ranks=self.trainer.world_size > 1)
        if scaler is None:
            optimizer.optimizer.found_inf = skip  # (a GradScaler passes its own finding)
        self._unbinned.append((step, sigma, sq_err, per_sample, skip))
        log = (step + 1) % self.config.trainer.log_every == 0
        clip = self.config.optim.grad_clip
        grad_norm = gradient_norm(grads) if log or clip is not None else None  # before clipping
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self._trained_parameters, clip, grad_norm)
        lr = optimizer.param_groups[0]['lr']  # the rate this step uses
        optimizer.step()
        self.lr_schedulers().step()
        # The EMAs and the profile advance with the optimizer, before callbacks (checkpoints) see the step.
        # A skipped step leaves the weights as they were, and the EMAs average them once more.
        self._update_emas()
        if self.posthoc_ema is not None and self.global_step % self.config.ema.snapshot_every == 0:
            # Before the step's checkpoint: a kill during this write leaves a snapshot newer than
            # the last checkpoint, which the resumed run deletes (on_train_start).
            self._snapshot_posthoc()
        if self.global_step % self.config.noise.refresh_every == 0:
            self._bin_errors()
            self.profile.refresh()  # a collective under DDP: every rank calls it
        elif log or len(self._unbinned) >= BIN_EVERY:
            self._bin_errors()
        if log:
            self._log_scalars(step, loss=per_sample.mean(), grad_norm=grad_norm, lr=lr, sigma=sigma)

    @torch.no_grad()
    def _update_emas(self):
        """One step of the EMA and (on rank 0) the post-hoc EMAs, as ema-pytorch's `update` takes it, with the
        step counted on the host and the decay a Python number: its own `update` reads both from the device."""
        e, step = self.config.ema, self._ema_step
        self._ema_step += 1
        self.ema.step.add_(1)
        if step % e.update_every == 0:
            copy = step == 0 or step <= e.update_after_step  # ema-pytorch: its first update, and the warm-up
            decay = 0.0 if copy else min(1 - (1 + step - e.update_after_step) ** -e.power, e.beta)
            torch._foreach_lerp_(*self._ema_tensors, 1 - decay)  # a weight of 1 copies exactly
            self.ema.initted.fill_(True)
        if self.posthoc_ema is None:
            return
        step = self._posthoc_step
        self._posthoc_step += 1
        for ema, tensors in zip(self.posthoc_ema.ema_models, self._posthoc_tensors):
            ema.step.add_(1)
            if step % ema.update_every == 0:  # EDM2's power-function EMA: β = (1 − 1/t)^(γ+1), t = step + 2
                torch._foreach_lerp_(*tensors, 1.0 if step == 0 else 1 - (1 - 1 / (step + 2)) ** (1 + ema.gamma))
                ema.initted.fill_(True)

    def _snapshot_posthoc(self):
        """The post-hoc EMAs' files, `<index>.<step>.pt`, as ema-pytorch's synthesis reads them, the weights in
        half precision as EDM2 stores its snapshots (the counters as they are)."""
        for index, ema in enumerate(self.posthoc_ema.ema_models):
            state = {name: value.to('cpu', torch.float16) if value.is_floating_point() else value.cpu()
                     for name, value in ema.state_dict().items()}
            save_atomically(state, self.posthoc_folder / f'{index}.{self._posthoc_step}.pt')

    def _bin_errors(self):
        """Settle the steps since the last call: which of them were skipped for a non-finite loss or
        gradient (one host synchronisation for them all, `_count_nonfinite`), then add the errors of the
        others to the profile's pending sums and to the loss-against-σ bins, all at once: binning is two
        dozen small tensor operations, a visible share of a toy model's step, so it runs at logging steps,
        every BIN_EVERY steps and at refreshes, figures and checkpoints rather than at every step. The
        profile's sums come out the same however the steps are grouped (`EntropyProfile.update`). Every rank
        calls it at the same steps, so that all stop together."""
        if not self._unbinned:
            return
        skipped = torch.stack([entry[-1] for entry in self._unbinned]).tolist()
        kept = []
        for (step, sigma, sq_err, per_sample, _), skip in zip(self._unbinned, skipped):
            if skip:
                self._count_nonfinite(step, sigma, per_sample)
            else:
                self._nonfinite_streak = []
                kept.append((sigma, sq_err, per_sample))
        self._unbinned = []
        if kept:
            sigma, sq_err, per_sample = (torch.cat(column) for column in zip(*kept))
            self.profile.update(sigma, sq_err)
            self.sigma_bins.update(sigma, per_sample)

    def _log_scalars(self, step, loss, grad_norm, lr, sigma):
        """The scalars of step `step` (0-based, as Lightning counts them), straight to the loggers:
        once `self.log` holds values Lightning walks them on every step, logged or not (with `self.log`,
        a few percent of the default toy run's training loop in a py-spy profile). The progress bar shows the
        loss (`ProgressBar`)."""
        quantiles = torch.quantile(sigma.float(), torch.tensor([0.1, 0.5, 0.9], device=sigma.device))
        scalars = {'train/loss': loss, 'train/grad_norm': grad_norm,  # the norm before clipping
                   'train/lr': lr, 'train/nonfinite_steps': self.nonfinite_steps,  # skipped so far, whole run
                   **{f'sigma/q{q}': value for q, value in zip((10, 50, 90), quantiles)}}
        if self.config.noise.density in STRUCTURE_DENSITIES:
            scalars['noise/structure_fraction'] = self.profile.structure_fraction()
        scalars = {name: float(value) for name, value in scalars.items()}
        self.progress_metrics = {'loss': f"{scalars['train/loss']:.3g}"}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()  # flushed to disk as Lightning does after logging

    def _count_nonfinite(self, step, sigma, per_sample):
        """Count a step skipped for a non-finite loss or gradient; at `trainer.max_nonfinite` such steps in a
        row, stop the run: it ends as a finished one does (the newest state, which no bad batch changed, goes
        to last.ckpt), then `on_train_end` raises NonFiniteError naming the steps and the σ of the offending
        samples (this rank's; the skip decisions are the same on every rank). The steps are settled in groups
        (`_bin_errors`), so the run stops up to `trainer.log_every` steps after the streak, all of them skipped."""
        self.nonfinite_steps += 1
        bad = ~per_sample.isfinite()
        self._nonfinite_streak.append((step, sigma[bad] if bad.any() else sigma))  # the whole batch if only gradients were hit
        limit = self.config.trainer.max_nonfinite
        if len(self._nonfinite_streak) == limit:
            sigma = torch.cat([s for _, s in self._nonfinite_streak])
            self.stopped_by = NonFiniteError(
                f'steps {self._nonfinite_streak[0][0]}-{step}: non-finite loss or gradient in {limit} batches in a '
                f'row (trainer.max_nonfinite), σ of the offending samples in [{sigma.min():.3g}, {sigma.max():.3g}]')
            self.trainer.should_stop = True

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.global_step
        if step % self.config.trainer.plot_every == 0:
            self._bin_errors()  # on every rank: a streak it finds stops them all
            if self.trainer.is_global_zero and not self._nonfinite_streak:
                self._log_figures(step)

    def on_train_end(self):
        self._bin_errors()
        if self.trainer.is_global_zero:
            if self.global_step % self.config.trainer.plot_every:  # else the last step drew them
                self._log_figures(self.global_step)
            if self.config.run_dir is None:  # a Trainer of the user's own, outside train.py
                return
            run_dir = Path(self.config.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            plots.save(plots.profile_figure(self.profile, training_log_density=self.noise.log_density), run_dir / 'profile.png')
            (run_dir / 'profile.json').write_text(json.dumps(profile_summary(self.profile), indent=1))
        if self.stopped_by is not None:
            raise self.stopped_by

    @torch.no_grad()
    def _log_figures(self, step):
        if self.logger is None:
            return
        tb = self.logger.experiment
        s = self.config.sample
        model = self.sampling_model()
        x = model.sample(s.num, seed=0)
        if len(self.dataset.shape) == 3:
            tb.add_image('samples', plots.image_grid(x, scale=self.dataset.scale), step)
            t = self.config.trainer
            if t.probe:  # its own generators: the training streams are untouched
                tb.add_scalar('eval/probe_accuracy', probe_accuracy(
                    model, sigma=t.probe_sigma, num_train=t.probe_train, num_test=t.probe_test,
                    seed=self.config.seed)['accuracy'], step)
        else:
            reference = self.dataset.sample(s.num, generator=rng.generator(self.device, self.config.seed, 2**16))
            for name, value in sample_metrics(x, reference, mixture=self.dataset.mixture).items():
                tb.add_scalar(f'eval/{name}', value, step)
            tb.add_figure('samples', plots.samples_figure(x, reference, title=f'EMA, step {step}'), step)
        self._bin_errors()
        centres, means = self.sigma_bins.pop()
        tb.add_figure('loss_vs_sigma', plots.loss_vs_sigma_figure(centres, means), step)
        # The profile as of its latest refresh; drawn here rather than at every refresh because
        # a figure costs about a second on a CPU, many training steps of a toy model.
        tb.add_figure('profile', plots.profile_figure(self.profile, training_log_density=self.noise.log_density), step)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        self._bin_errors()  # into the profile's pending sums, which the checkpoint keeps per rank
        checkpoint['cedm'] = {
            'format': FORMAT_VERSION,
            'config': config_to_dict(self.config),
            'ema': self.ema.state_dict(),
            'posthoc_ema': None if self.posthoc_ema is None else self.posthoc_ema.state_dict(),
            'ranks': self._gather_rank_states(),
            'profile': self.profile.state_dict(),
            'nonfinite_steps': self.nonfinite_steps,
            'data_shape': list(self.dataset.shape),  # what sampling needs without the data (sampling_model)
            'num_classes': self.num_classes,
        }

    def _gather_rank_states(self):
        """Every rank's own state, rank 0 first: its random states (data and σ generators, and the
        global ones) and the profile statistics it has not yet shared (summed over ranks at the next
        refresh). Every rank saves (Lightning dumps the checkpoint everywhere, rank 0 writes it): a collective."""
        local = {'data': self.data_generator.get_state(), 'sigma': self.sigma_generator.get_state(), **rng.global_state(),
                 'profile_pending': torch.stack([self.profile.pending_sum, self.profile.pending_count]).cpu()}
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [local]
        states = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, local)
        return states

    def check_checkpoint(self, path, checkpoint):
        """Load `checkpoint` (read from `path`), or CheckpointError in one line when it does not fit this model."""
        mismatch = state_dict_mismatch(self.state_dict(), checkpoint['state_dict'])
        if mismatch:
            raise CheckpointError(f"{path}: does not fit the model its config builds: {mismatch}")
        try:
            self.load_state_dict(checkpoint['state_dict'])
            self.on_load_checkpoint(checkpoint)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: its state does not match this version of cedm's model: {first_line(e)}") from None

    def on_load_checkpoint(self, checkpoint):
        meta = checkpoint['cedm']
        self.ema.load_state_dict(meta['ema'])
        if self.posthoc_ema is not None:
            self.posthoc_ema.load_state_dict(meta['posthoc_ema'])
        self.profile.load_state_dict(meta['profile'])
        # Checkpoints written before the ranks' own states were kept hold rank 0's generators only.
        self._rank_states = meta['ranks'] if 'ranks' in meta else [meta['generators']]
        self.nonfinite_steps = meta.get('nonfinite_steps', 0)

    # ------------------------------------------------------------------ sampling
    def sampling_model(self):
        """The model as `sampling_model.load_model` rebuilds it from a checkpoint, sharing this module's
        EMA and raw networks, profile and data: what the training figures sample with."""
        self._place()
        return SamplingModel(self.config, self.ema.ema_model, self.denoiser, self.profile, self.dataset.shape,
                             self.num_classes, dataset=self.dataset)


def ema_tensors(ema):
    """(averaged tensors, the online model's tensors they follow) of an ema-pytorch EMA or KarrasEMA: what
    one of its updates lerps, listed once."""
    def tensors(model):
        return [t for _, t in itertools.chain(ema.get_params_iter(model), ema.get_buffers_iter(model))]
    return tensors(ema.ema_model), tensors(ema.model)


def configure_cuda(tf32):
    """EDM's and EDM2's CUDA settings: cuDNN times its algorithms once per shape and keeps the fastest; TF32
    matrix products and convolutions only with `trainer.tf32` (off: EDM's fp32 runs)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


def is_distributed(trainer_config):
    """Whether training runs in several processes: devices × nodes > 1, or a launcher (torchrun) set WORLD_SIZE."""
    t = trainer_config
    return t.devices * t.num_nodes > 1 or int(os.environ.get('WORLD_SIZE', 1)) > 1


def gradient_norm(grads):
    """The 2-norm of the tensors `grads` (on one device) taken together, as a tensor, without host
    synchronisation. `torch.nn.utils.get_total_norm` computes the same through the same fused
    per-tensor norms, after grouping the tensors by device and dtype in Python, which costs as much
    again on a toy model's step."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def any_nonfinite(tensors, across_ranks=False):
    """Whether any of `tensors` (on one device) holds a NaN or an infinity, as a float 0 or 1 on that
    device (no host synchronisation; the `found_inf` of fused optimizers); with `across_ranks`, whether
    any rank's do (one all-reduce of the flag).

    One fused pass over them all: the overflow check of torch's GradScaler, with a scale of 1 that
    leaves every value as it was: cheaper than testing the gradient norm and the loss apart
    (benchmarks/README.md, train_overhead)."""
    found = torch.zeros((), device=tensors[0].device)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, torch.ones((), device=found.device))
    if across_ranks:
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
    return found


def batch_split(trainer_config, world_size):
    """(samples per rank, samples per pass): trainer.batch_size is the global batch, split over the
    ranks and, beyond trainer.batch_gpu, into passes whose gradients accumulate (EDM's batch_gpu)."""
    t = trainer_config
    if t.batch_size % world_size:
        raise ConfigError(f'trainer.batch_size: {t.batch_size} does not split over {world_size} devices')
    per_rank = t.batch_size // world_size
    per_pass = min(t.batch_gpu or per_rank, per_rank)
    if per_rank % per_pass:
        raise ConfigError(f'trainer.batch_gpu: {per_pass} does not divide the {per_rank} samples per device')
    return per_rank, per_pass


def learning_rate_factor(step, warmup_steps, ref_steps=None):
    """The learning rate of optimizer step `step` (from 0) over `optim.lr`: a linear warm-up over
    `warmup_steps`, then constant, or with `ref_steps` EDM2's inverse square-root decay
    1/sqrt(max(t/ref_steps, 1)) (Karras et al. 2024, eq. 21; t counted in steps here, not images)."""
    t = step + 1
    factor = min(1.0, t / max(warmup_steps, 1))
    return factor if ref_steps is None else factor / math.sqrt(max(t / ref_steps, 1.0))


def profile_summary(profile):
    """The profile as plain lists (for profile.json): σ grid, mmse and lmmse, the entropy and structure
    rates, entropy, remaining negentropy and rescaled time."""
    sigma, mmse = profile.mmse()
    return {'sigma': sigma.tolist(), 'mmse': mmse.tolist(), 'lmmse': profile.lmmse()[1].tolist(),
            'entropy_rate_nats_per_log_sigma': profile.rate()[1].tolist(),
            'structure_rate_nats_per_log_sigma': profile.structure_rate()[1].tolist(),
            'entropy_nats': profile.entropy()[1].tolist(), 'negentropy_above_sigma_nats': profile.negentropy()[1].tolist(),
            'rescaled_time': profile.rescaled()[1].tolist()}
