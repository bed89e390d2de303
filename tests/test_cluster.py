"""Training at scale, checked on a CPU: no host synchronisation in a step, the EMAs driven from the host,
checkpoint retention and disk use, fp16 gradient clipping, the EDM2 network's float32 islands and its
log-variance head, CUDA settings and the spectrum's cost. (Several ranks: tests/test_distributed.py.)"""

import dataclasses
import math

import lightning as L
import pytest
import torch
from ema_pytorch import EMA, PostHocEMA
from lightning.pytorch.plugins.precision import MixedPrecision

import train
from benchmarks.train_overhead import StepSyncs
from entropy.spectrum import covariance_spectrum
from networks import build_denoiser
from networks.mp_unet import mp_unet
from training import module as module_lib
from training.callbacks import disk_use, kept_steps
from config import ConfigError, load_config
from training.loss import edm_loss
from training.module import EDMModule

QUIET = ['trainer.batch_size=64', 'trainer.progress_bar=false', 'trainer.plot_every=100000']


def _fit(config, steps, callbacks=(), plugins=None):
    trainer = L.Trainer(max_steps=steps, accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        plugins=plugins)
    model = EDMModule(config)
    trainer.fit(model)
    return model


# ------------------------------------------------------------------------------------------------
# Host synchronisations and the EMAs

def test_training_steps_make_no_host_synchronisation(tmp_path):
    """A step that neither logs nor refreshes reads nothing back from the device: the non-finite check, the
    EMAs' counters and decay, the entropic σ's warm-up and Adam's step counters stay on it (once: the count
    of refreshes read when the warm-up ends)."""
    config = load_config('configs/toy/default.yaml', [
        *QUIET, 'trainer.log_every=10', 'noise.name=entropic', 'noise.warmup_steps=5', 'noise.refresh_every=5',
        'ema.update_after_step=3', 'ema.posthoc=true', 'ema.snapshot_every=1000', f'run_dir={tmp_path}'])
    counter = StepSyncs()
    _fit(config, 30, [counter])
    quiet = [count for step, count in enumerate(counter.counts) if (step + 1) % 5]
    assert len(quiet) == 24 and [count for count in quiet if count] == [1], counter.counts


def test_host_driven_emas_match_ema_pytorchs_own_updates(tmp_path):
    """Over a warm-up and `update_every` > 1, the EMA and the post-hoc EMAs as training advances them equal
    ema-pytorch's `update` applied after each optimizer step."""
    config = load_config('configs/toy/default.yaml', [
        *QUIET, 'ema.update_after_step=4', 'ema.update_every=2', 'ema.posthoc=true', 'ema.snapshot_every=1000',
        f'run_dir={tmp_path}'])
    references = []

    class Reference(L.Callback):
        def on_train_start(self, trainer, module):
            e = config.ema
            references.append(EMA(module.denoiser, beta=e.beta, power=e.power, update_after_step=e.update_after_step,
                                  update_every=e.update_every, include_online_model=False))
            references.append(PostHocEMA(module.denoiser, sigma_rels=tuple(e.posthoc_sigma_rels),
                                         checkpoint_every_num_steps='manual', checkpoint_folder=str(tmp_path / 'ref'),
                                         update_every=3))
            for ema in module.posthoc_ema.ema_models:
                ema.update_every = 3  # ema-pytorch's default of 100 would leave 12 steps one update

        def on_train_batch_end(self, trainer, module, *args):
            for reference in references:
                reference.update()

    model = _fit(config, 12, [Reference()])
    ema, posthoc = references
    assert model.ema.step.item() == ema.step.item() == 12
    for a, b in zip(model.ema.ema_model.parameters(), ema.ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for mine, theirs in zip(model.posthoc_ema.ema_models, posthoc.ema_models):
        assert mine.step.item() == theirs.step.item() == 12
        for a, b in zip(mine.ema_model.parameters(), theirs.ema_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Checkpoint retention, snapshots and disk use

def _periodic(run_dir):
    return sorted(p.name for p in (run_dir / 'checkpoints').glob('step-*.ckpt'))


def test_retention_keeps_the_newest_and_the_milestones_across_a_resume(tmp_path):
    run = [*QUIET, 'trainer.ckpt_every=10', 'trainer.keep_last=2', 'trainer.keep_every=20', 'ema.posthoc=true',
           'ema.snapshot_every=15', f'run_dir={tmp_path}']
    train.main([*run, 'trainer.max_steps=45'])  # 45: the cadence does not divide it; last.ckpt is its own file
    assert _periodic(tmp_path) == ['step-0000020.ckpt', 'step-0000030.ckpt', 'step-0000040.ckpt']
    assert torch.load(tmp_path / 'checkpoints' / 'last.ckpt', weights_only=True)['global_step'] == 45
    train.main(['--resume', 'auto', *run, 'trainer.max_steps=75'])
    assert _periodic(tmp_path) == ['step-0000020.ckpt', 'step-0000040.ckpt', 'step-0000060.ckpt', 'step-0000070.ckpt']
    assert torch.load(tmp_path / 'checkpoints' / 'last.ckpt', weights_only=True)['global_step'] == 75
    # Post-hoc EMA snapshots, as EDM2 stores them: the weights in half precision.
    snapshot = torch.load(tmp_path / 'posthoc-ema' / '0.60.pt', weights_only=True)
    assert {v.dtype for k, v in snapshot.items() if 'ema_model' in k} == {torch.float16}
    assert snapshot['step'].item() == 60


def test_retention_never_deletes_the_newest_checkpoint():
    steps = list(range(10, 101, 10))
    assert kept_steps(steps, 1, None) == {100}
    assert kept_steps(steps, 3, 40) == {40, 80, 90, 100}
    assert kept_steps(steps, None, None) == set(steps)
    with pytest.raises(ConfigError, match='trainer.keep_last: must be a finite number > 0'):
        load_config('configs/toy/default.yaml', ['trainer.keep_last=0'])
    with pytest.raises(ConfigError, match=r'trainer.keep_every: must be a multiple of trainer.ckpt_every \(1000\)'):
        load_config('configs/toy/default.yaml', ['trainer.keep_every=1500'])


def test_disk_use_counts_the_kept_files_and_the_snapshots():
    config = load_config('configs/toy/default.yaml', ['trainer.max_steps=10500', 'trainer.ckpt_every=1000',
                                                      'trainer.keep_last=3', 'trainer.keep_every=5000',
                                                      'ema.posthoc=true', 'ema.snapshot_every=500'])
    checkpoint, files, snapshots = disk_use(config, 1000)
    assert checkpoint == 4 * 1000 * (4 + 2)  # raw, EMA, Adam's two moments and two post-hoc EMAs, float32
    assert files == 4 + 1  # 5000, 8000, 9000, 10000, and last.ckpt at 10500
    assert snapshots == 2 * 1000 * 2 * 21  # two widths, float16, every 500 steps


# ------------------------------------------------------------------------------------------------
# Precision

def _step_zero(precision_plugin, clip, monkeypatch):
    """(logged gradient norm, norm of the gradients the optimizer steps with) of one toy step."""
    logged, stepped = [], []
    monkeypatch.setattr(EDMModule, '_log_scalars', lambda self, step, grad_norm, **_: logged.append(grad_norm.item()))
    real_step = torch.optim.Adam.step

    def step(optimizer, *args, **kwargs):
        stepped.append(module_lib.gradient_norm([p.grad for p in optimizer.param_groups[0]['params']]).item())
        return real_step(optimizer, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, 'step', step)
    config = load_config('configs/toy/default.yaml', [*QUIET, 'trainer.log_every=1', f'optim.grad_clip={clip}'])
    _fit(config, 1, plugins=precision_plugin)
    return logged[0], stepped[0]


def test_fp16_gradients_are_unscaled_before_they_are_clipped_and_logged(monkeypatch):
    reference, _ = _step_zero(None, 1e9, monkeypatch)  # float32, no clipping
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0**16)
    norm, stepped = _step_zero([MixedPrecision('16-mixed', 'cpu', scaler=scaler)], reference / 2, monkeypatch)
    assert norm == pytest.approx(reference, rel=0.1)  # fp16 arithmetic, but not 65536 times it
    assert stepped == pytest.approx(reference / 2, rel=1e-3)  # clipped to optim.grad_clip, not to 1/65536 of it


def test_edm2_embedding_and_log_variance_stay_in_float32_under_autocast():
    net = mp_unet('mnist-small', label_dim=10)
    c_noise = torch.linspace(-1, 1, 4)
    labels = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert net.embedding(c_noise, labels).dtype == torch.float32
        assert net.logvar(c_noise).dtype == torch.float32
        assert net(torch.randn(4, 1, 28, 28), c_noise, labels).dtype == torch.bfloat16  # the rest does not
    with torch.autocast('cpu', dtype=torch.bfloat16):
        emb = net.embedding(c_noise, labels)
    torch.testing.assert_close(emb, net.embedding(c_noise, labels), rtol=0, atol=0)


def test_cuda_settings_follow_edm_and_the_tf32_key():
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert load_config('configs/toy/default.yaml').trainer.tf32 is False
        module_lib.configure_cuda(load_config('configs/toy/default.yaml').trainer.tf32)
        assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32) == (True, False, False)
        module_lib.configure_cuda(load_config('configs/toy/default.yaml', ['trainer.tf32=true']).trainer.tf32)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------------------
# The EDM2 network's log-variance head

def test_mp_unet_without_learned_weighting_has_no_unused_parameter():
    """Every parameter gets a gradient (DDP stops at the second step otherwise), and a state dict written
    with the head loads."""
    config = load_config('configs/mnist/small.yaml', ['network.name=mp-unet', 'network.preset=mnist-small'])
    assert not config.network.learned_weighting
    torch.manual_seed(0)
    denoiser = build_denoiser(config.network, config.precond, (1, 28, 28))
    per_sample, _ = edm_loss(denoiser, torch.randn(2, 1, 28, 28), torch.tensor([0.5, 2.0]))
    per_sample.sum().backward()
    assert [name for name, p in denoiser.named_parameters() if p.grad is None] == []
    with_head = build_denoiser(dataclasses.replace(config.network, learned_weighting=True), config.precond, (1, 28, 28))
    assert any('logvar_head' in name for name in with_head.state_dict())
    denoiser.load_state_dict(with_head.state_dict())
    torch.testing.assert_close(next(denoiser.parameters()), next(with_head.parameters()))


# ------------------------------------------------------------------------------------------------
# The covariance spectrum's cost

def test_spectrum_of_fewer_points_than_dimensions_comes_from_their_gram_matrix(monkeypatch):
    points = torch.randn(50, 300, dtype=torch.float64) * torch.linspace(0.1, 3, 300, dtype=torch.float64)
    centred = points - points.mean(0)
    full = torch.linalg.eigvalsh(centred.T @ centred / 49).flip(0).clamp_min(0)
    sizes, eigvalsh = [], torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, 'eigvalsh', lambda m: sizes.append(m.shape) or eigvalsh(m))
    spectrum = covariance_spectrum(points, batch_size=16)
    assert sizes == [(50, 50)]  # never the 300 × 300 covariance
    assert spectrum.shape == (300,) and (spectrum.diff() <= 0).all()
    torch.testing.assert_close(spectrum[:49], full[:49], rtol=1e-9, atol=1e-12)
    assert spectrum[49:].abs().max() < 1e-9 * spectrum[0]
    drawn = covariance_spectrum(lambda n: points[:n], 50)  # drawn points too
    torch.testing.assert_close(drawn, spectrum, rtol=1e-9, atol=1e-12)
    assert math.isclose(spectrum.sum().item(), centred.square().sum().item() / 49, rel_tol=1e-9)
