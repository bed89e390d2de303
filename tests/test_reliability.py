"""Failures and recovery: exact resume, signals, kills at random moments, non-finite losses,
degenerate profiles, and randomly mutated configs."""

import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

import metrics
import sampling
import train
from datasets.mixture import GaussianMixture
from training import module as module_lib
from checkpoint_file import read_checkpoint
from config import ConfigError, config_from_dict, config_to_dict, load_config
from entropy.profile import EntropyProfile
from sampling_model import load_model
from training.module import EDMModule

SMALL = ['trainer.batch_size=64', 'trainer.log_every=5', 'trainer.plot_every=100000', 'trainer.progress_bar=false',
         'sample.num=100', 'ema.update_after_step=5', 'noise.name=entropic', 'noise.warmup_steps=10',
         'noise.refresh_every=7']


def assert_same_training_state(a, b):
    """Two checkpoint dicts hold bit-identical weights, EMA, optimizer, schedule, profile and random states."""
    assert a['global_step'] == b['global_step']
    for key in ('state_dict', 'optimizer_states', 'lr_schedulers'):
        _assert_equal(a[key], b[key], key)
    for key in ('ema', 'profile', 'ranks', 'nonfinite_steps'):
        _assert_equal(a['cedm'][key], b['cedm'][key], key)


def _assert_equal(x, y, path):
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for key in x:
            _assert_equal(x[key], y[key], f'{path}/{key}')
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_equal(u, v, f'{path}[{i}]')
    elif torch.is_tensor(x):
        assert torch.equal(x, y), path
    else:
        assert x == y, path


def _checkpoint(run_dir, name='last.ckpt'):
    return torch.load(run_dir / 'checkpoints' / name, weights_only=True)


# ------------------------------------------------------------------------------------------------
# Exact resume (in-process)

@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    train.main(SMALL + ['trainer.max_steps=45', 'trainer.ckpt_every=20', f'run_dir={tmp_path / "a"}'])
    train.main(['--resume', str(tmp_path / 'a' / 'checkpoints' / 'step-0000020.ckpt'), f'run_dir={tmp_path / "b"}'])
    a, b = _checkpoint(tmp_path / 'a'), _checkpoint(tmp_path / 'b')
    assert a['global_step'] == 45
    assert_same_training_state(a, b)
    # The counters that make it so are in the checkpoint and have moved.
    assert a['cedm']['ema']['step'] == 45 and a['cedm']['profile']['num_refreshes'] == 6
    assert not torch.equal(a['cedm']['ranks'][0]['data'], _checkpoint(tmp_path / 'a', 'step-0000020.ckpt')['cedm']['ranks'][0]['data'])


def test_global_random_states_round_trip_through_a_checkpoint(tmp_path):
    import numpy as np

    from training import rng
    state = rng.global_state()
    torch.save({'state': state}, tmp_path / 's.pt')
    expected = (torch.rand(3), np.random.rand(3), random.random())
    rng.set_global_state(torch.load(tmp_path / 's.pt', weights_only=True)['state'])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


# ------------------------------------------------------------------------------------------------
# Signals: save, stop, say how to resume

class _SendSignal(L.Callback):
    def __init__(self, signum, at_step):
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)  # arrives mid-step: the step must still finish


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_exits_with_a_resume_hint(signum, tmp_path, monkeypatch, capsys):
    build = train.build_trainer
    monkeypatch.setattr(train, 'build_trainer', lambda *args: _with_callback(build(*args), _SendSignal(signum, 13)))
    run_dir = tmp_path / 'run'
    handler = signal.getsignal(signum)  # SIG_IGN for SIGINT in a pytest-xdist worker, the default otherwise
    with pytest.raises(SystemExit) as info:
        train.main(SMALL + ['trainer.max_steps=1000', 'trainer.ckpt_every=10', f'run_dir={run_dir}'])
    assert info.value.code == 128 + signum
    assert sorted(p.name for p in (run_dir / 'checkpoints').glob('*.ckpt')) == ['last.ckpt', 'step-0000010.ckpt']
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f'cedm: stopped by {signal.Signals(signum).name} at step 14; checkpoint {run_dir}/checkpoints/last.ckpt; '
                   f'resume with: python train.py --resume auto run_dir={run_dir}')
    assert _checkpoint(run_dir)['global_step'] == 14
    assert signal.getsignal(signum) == handler  # handlers given back
    monkeypatch.undo()
    # What a user does with a stopped run: look at it (metrics.py), then continue it.
    metrics.main(['--ckpt', str(run_dir / 'checkpoints' / 'last.ckpt'), '--num', '200', '--steps', '4', '--json', str(tmp_path / 'm.json')])
    assert set(json.loads((tmp_path / 'm.json').read_text())['model']) == {'swd', 'mmd', 'nll'}
    train.main(['--resume', 'auto', f'run_dir={run_dir}', 'trainer.max_steps=23'])
    assert _checkpoint(run_dir)['global_step'] == 23
    assert sorted(p.name for p in (run_dir / 'checkpoints').glob('*.ckpt')) == ['last.ckpt', 'step-0000010.ckpt', 'step-0000020.ckpt']


def _with_callback(trainer, callback):
    trainer.callbacks.insert(0, callback)
    return trainer


class _RecordNvmlCheck(L.Callback):
    """Records Lightning's NVML-check variable at every step; raises at step `fail_at`."""

    def __init__(self, fail_at=None):
        self.seen, self.fail_at = [], fail_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(os.environ.get(module_lib.NVML_CHECK))
        if trainer.global_step == self.fail_at:
            raise RuntimeError('failing on purpose')


@pytest.mark.parametrize('fail_at', [None, 3])
def test_cpu_training_steps_without_lightnings_nvml_check_and_restores_it(fail_at, tmp_path, monkeypatch):
    # Lightning sets the variable at import; torch's Adam then asks NVML at every step (module.RuntimeCudaCheck).
    assert os.environ.get(module_lib.NVML_CHECK) == '1'
    recorder = _RecordNvmlCheck(fail_at)
    build = train.build_trainer
    monkeypatch.setattr(train, 'build_trainer', lambda *args: _with_callback(build(*args), recorder))
    args = SMALL + ['trainer.max_steps=6', f'run_dir={tmp_path}']
    if fail_at is None:
        train.main(args)
    else:
        with pytest.raises(RuntimeError, match='failing on purpose'):
            train.main(args)
    assert recorder.seen == [None] * (fail_at or 6)
    assert os.environ.get(module_lib.NVML_CHECK) == '1'  # given back, after a crash as well


# ------------------------------------------------------------------------------------------------
# Real processes, killed at random moments

TARGET_STEPS = 405  # not a multiple of ckpt_every: the final state is not a periodic checkpoint
KILL_RUN = SMALL + [f'trainer.max_steps={TARGET_STEPS}', 'trainer.ckpt_every=10']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')  # the same arithmetic in every process


def _train_process(run_dir, *extra):
    return subprocess.Popen([sys.executable, 'train.py', *KILL_RUN, f'run_dir={run_dir}', *extra], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f'{path} never appeared'
        time.sleep(0.05)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('runs') / 'uninterrupted'
    process = _train_process(run_dir)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return _checkpoint(run_dir)


@pytest.mark.slow
def test_signalled_process_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    # SIGTERM, what schedulers send; every handled signal goes through the same handler, each tested
    # in-process above (test_signal_saves_a_checkpoint_and_exits_with_a_resume_hint).
    signum, run_dir = signal.SIGTERM, tmp_path / 'run'
    process = _train_process(run_dir)
    _wait_for(run_dir / 'checkpoints' / 'step-0000010.ckpt')
    time.sleep(random.Random(signum).uniform(0, 1))
    process.send_signal(signum)
    assert process.wait(timeout=120) == 128 + signum
    stopped_at = _checkpoint(run_dir)['global_step']
    assert 10 <= stopped_at < TARGET_STEPS
    assert f'cedm: stopped by {signal.Signals(signum).name} at step {stopped_at}' in process.stderr.read()
    resumed = _train_process(run_dir, '--resume', 'auto')
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_same_training_state(_checkpoint(run_dir), uninterrupted)


@pytest.mark.slow
def test_killed_at_random_moments_last_checkpoint_stays_loadable(uninterrupted, tmp_path):
    """SIGKILL (no chance to save) at random moments: during start-up, training and checkpoint writes
    (one every 10 steps). last.ckpt is always whole, and `--resume auto` still ends where an
    uninterrupted run does."""
    run_dir, rand = tmp_path / 'run', random.Random(0)
    last = run_dir / 'checkpoints' / 'last.ckpt'
    for kill in range(4):
        process = _train_process(run_dir, '--resume', 'auto')
        if kill == 0:  # somewhere in start-up or the first steps
            time.sleep(rand.uniform(0.5, 4))
        else:  # soon after this process wrote its first checkpoint: often during a later write
            before = last.stat().st_mtime_ns if last.exists() else None
            while not (last.exists() and last.stat().st_mtime_ns != before):
                assert process.poll() is None, process.stderr.read()
                time.sleep(0.01)
            time.sleep(rand.uniform(0, 0.3))
        process.kill()
        process.wait(timeout=60)
        if last.exists():
            checkpoint, _ = read_checkpoint(last)
            assert checkpoint['global_step'] % 10 == 0 or checkpoint['global_step'] == TARGET_STEPS
            load_model(last, device='cpu')
    assert _checkpoint(run_dir)['global_step'] < TARGET_STEPS, 'the kills came too late to test anything'
    final = _train_process(run_dir, '--resume', 'auto')
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert not list((run_dir / 'checkpoints').glob('.*.tmp*'))  # leftovers of killed writes are cleared
    assert_same_training_state(_checkpoint(run_dir), uninterrupted)


# ------------------------------------------------------------------------------------------------
# Non-finite losses

def _poison_loss(monkeypatch, bad_batches, sigma_above=1.0):
    """Make the loss NaN for samples with σ > sigma_above in the given batches (counted from 0)."""
    real, calls = module_lib.edm_loss, [0]

    def edm_loss(denoiser, x0, sigma, **kwargs):
        per_sample, sq_err = real(denoiser, x0, sigma, **kwargs)
        if calls[0] in bad_batches:
            per_sample = torch.where(sigma > sigma_above, torch.nan, per_sample)
        calls[0] += 1
        return per_sample, sq_err

    monkeypatch.setattr(module_lib, 'edm_loss', edm_loss)


@pytest.mark.slow
def test_nonfinite_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, bad_batches={6, 7, 20})
    run_dir = tmp_path / 'run'
    train.main(SMALL + ['trainer.max_steps=30', 'trainer.ckpt_every=30', 'trainer.max_nonfinite=3', f'run_dir={run_dir}'])
    checkpoint = _checkpoint(run_dir)
    assert checkpoint['global_step'] == 30  # 30 steps, 3 of them skipped (on the device: no host synchronisation)
    assert checkpoint['cedm']['nonfinite_steps'] == 3
    assert checkpoint['cedm']['ema']['step'] == 30
    assert all(torch.isfinite(p).all() for p in checkpoint['state_dict'].values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    values = [e.value for e in EventAccumulator(str(run_dir / 'tensorboard')).Reload().Scalars('train/nonfinite_steps')]
    assert values[-1] == 3


@pytest.mark.slow
def test_nonfinite_streak_stops_the_run_naming_step_and_sigma(tmp_path, monkeypatch, capsys):
    _poison_loss(monkeypatch, bad_batches=set(range(25, 10**6)), sigma_above=2.0)
    run_dir = tmp_path / 'run'
    with pytest.raises(SystemExit) as info:
        train.main(SMALL + ['trainer.max_steps=100', 'trainer.ckpt_every=20', 'trainer.max_nonfinite=4', f'run_dir={run_dir}'])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.split(': ', 1)[1].startswith('stopped: steps 25-28: non-finite loss or gradient in 4 batches in a row')
    low = float(err.split('σ of the offending samples in [')[1].split(',')[0])
    assert low > 2.0
    # The run ends as a finished one: last.ckpt holds the newest state (no bad batch changed it), the
    # periodic checkpoint stays, and training continues from it once the cause is mended. The steps are
    # settled at the next logging step (log_every 5: step 30), so batches 25-29 were skipped.
    last = _checkpoint(run_dir)
    assert last['global_step'] == 30 and last['cedm']['nonfinite_steps'] == 5
    assert all(torch.isfinite(p).all() for p in last['state_dict'].values())
    assert sorted(p.name for p in (run_dir / 'checkpoints').glob('*.ckpt')) == ['last.ckpt', 'step-0000020.ckpt']
    assert (run_dir / 'profile.png').is_file()


def test_a_step_with_a_finite_loss_and_an_infinite_gradient_is_skipped(monkeypatch):
    config = load_config('configs/toy/default.yaml', ['trainer.batch_size=64', 'ema.update_after_step=0'])
    backward, calls = EDMModule.manual_backward, [0]

    def manual_backward(self, loss):
        backward(self, loss)
        if calls[0] == 2:  # the third batch: one gradient entry overflows, the loss stays finite
            next(self.denoiser.parameters()).grad.view(-1)[7] = torch.inf
        calls[0] += 1

    monkeypatch.setattr(EDMModule, 'manual_backward', manual_backward)
    states = []

    class States(L.Callback):  # weights and Adam's moments after each step
        def on_train_batch_end(self, trainer, module, *args):
            optimizer = trainer.optimizers[0]
            states.append([t.clone() for p in module.denoiser.parameters()
                           for t in (p, optimizer.state[p]['exp_avg'], optimizer.state[p]['exp_avg_sq'])])

    trainer = L.Trainer(max_steps=4, accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[States()])
    model = EDMModule(config)
    trainer.fit(model)
    assert (calls[0], trainer.global_step, model.nonfinite_steps, model.ema.step.item()) == (4, 4, 1, 4)
    assert all(torch.equal(a, b) for a, b in zip(states[1], states[2]))  # the third step changed nothing
    assert not any(torch.equal(a, b) for a, b in zip(states[2][::3], states[3][::3]))  # the fourth did
    assert all(torch.isfinite(p).all() for p in [*model.denoiser.parameters(), *model.ema.ema_model.parameters()])


def test_any_nonfinite_finds_nan_and_infinities_and_leaves_every_value_as_it_was():
    tensors = [torch.tensor([-0.0, 3.0e38, 1e-45]), torch.randn(4, 3), torch.tensor(2.0)]
    before = [t.clone() for t in tensors]
    assert not module_lib.any_nonfinite(tensors)
    assert all(torch.equal(a, b) and torch.equal(a.signbit(), b.signbit()) for a, b in zip(tensors, before))
    for value in (torch.nan, torch.inf, -torch.inf):
        for i in range(3):
            poisoned = [t.clone() for t in tensors]
            poisoned[i].view(-1)[-1] = value
            assert module_lib.any_nonfinite(poisoned), (value, i)


# ------------------------------------------------------------------------------------------------
# Degenerate statistics never give NaN or infinite σ

@pytest.mark.parametrize('errors', ['none', 'zero', 'huge', 'inf', 'nan'])
@pytest.mark.parametrize('density', ['entropic', 'rescaled'])
def test_degenerate_profiles_give_finite_sigmas(errors, density):
    profile = EntropyProfile(0.002, 80.0, num_bins=32, density=density, gate_c=0.1)
    if errors != 'none':
        sigma = torch.logspace(-2.7, 1.9, 4096)
        value = {'zero': 0.0, 'huge': 1e300, 'inf': torch.inf, 'nan': torch.nan}[errors]
        for _ in range(3):
            profile.update(sigma, torch.full_like(sigma, value, dtype=torch.float64))
            profile.refresh()
    drawn = profile.sample(10000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(drawn).all() and drawn.min() >= 0.002 * 0.999 and drawn.max() <= 80 * 1.001
    assert torch.isfinite(profile.log_density(drawn)).all()
    mixture = GaussianMixture([1.0], [[0.0, 0.0]], [[[0.25, 0.0], [0.0, 0.25]]])
    for kind in ('entropic', 'rescaled'):
        sigmas = profile.sigmas(8, kind=kind)
        assert torch.isfinite(sigmas).all() and (sigmas.diff() < 0).all() and sigmas[-1] == 0
        x = sampling.sample(mixture.denoise, torch.randn(64, 2) * 80, sigmas.float(), 'euler')
        assert torch.isfinite(x).all()


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written

@pytest.mark.slow
def test_rejected_input_writes_nothing(tmp_path, capsys):
    missing_data = ['data.name=mnist', f'data.root={tmp_path / "no-mnist"}', 'network.name=unet', 'network.preset=ddpmpp-tiny']
    for argv in (['optim.lr=-1'], ['--resume', str(tmp_path / 'missing.ckpt')], ['trainer.max_nonfinite=0'], missing_data):
        run_dir = tmp_path / 'never'
        with pytest.raises(SystemExit) as info:
            train.main(argv + [f'run_dir={run_dir}'])
        assert info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not run_dir.exists()


def test_numbers_yaml_reads_as_strings_are_accepted():
    # PyYAML reads 1e-3 (no dot) as a string; a user writing lr: 1e-3 means the number.
    assert load_config('configs/toy/default.yaml', ['optim.lr=1e-3']).optim.lr == 1e-3
    with pytest.raises(ConfigError, match=r"^optim.lr: must be a number \(got 'fast'\)$"):
        load_config('configs/toy/default.yaml', ['optim.lr=fast'])


def test_every_float_setting_rejects_inf_and_nan_by_name():
    # optim.weight_decay=inf once trained to nan weights, and noise.P_mean=inf to an all-skipped run.
    tree = config_to_dict(load_config('configs/toy/default.yaml'))
    floats = [path for path in _leaves(tree) if type(_get(tree, path)) is float]
    assert {('optim', 'weight_decay'), ('noise', 'P_mean'), ('noise', 'loc')} <= set(floats)
    for path in floats:
        key = '.'.join(path)
        for value in ('inf', '-inf', 'nan'):
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be a finite number \(got {value}\)$"):
                load_config('configs/toy/default.yaml', [f'{key}={value}'])


def _mutations(value):
    """Plausible mistakes, and plausible changes, for one config value."""
    common = [None, 'nonsense', [], {}, True, -1, 0]
    if isinstance(value, bool):
        return common + ['yes', 2, not value]
    if isinstance(value, int):
        return common + [-value, value * 2, value * 10, value + 1, max(value // 2, 1), 0.5, float('nan'), str(value), [value]]
    if isinstance(value, float):
        return common + [-value, value * 2, value * 10, value / 2, value / 10, float('nan'), float('inf'), str(value),
                         f'{value:e}', [value]]
    if isinstance(value, str):
        return common + ['', value.upper(), value[:-1] or 'x', 1.5]
    if isinstance(value, list):
        return common + [value[:-1], value + value[-1:], ['a'] * len(value), value[0] if value else 1]
    return common


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _run_one_step(config, tmp_path):
    config.run_dir = str(tmp_path)
    trainer = L.Trainer(max_steps=1, accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    model = EDMModule(config)
    trainer.fit(model)
    assert trainer.global_step + model.nonfinite_steps == 1
    assert torch.isfinite(model.sampling_model().sample(8, steps=3)).all()


@pytest.mark.slow
def test_randomly_mutated_configs_are_accepted_and_train_or_rejected_in_one_line(tmp_path):
    rand = random.Random(0)
    bases = [config_to_dict(load_config(f'configs/toy/{name}.yaml')) for name in ('default', 'gmm', 'tree', 'checkerboard')]
    accepted = rejected = 0
    for trial in range(300):
        tree = copy.deepcopy(rand.choice(bases))
        tree['trainer'].update(max_steps=1, batch_size=min(tree['trainer']['batch_size'], 64))
        paths, mutated = list(_leaves(tree)), set()
        for _ in range(rand.choice((1, 1, 2, 3))):
            path = rand.choice(paths)
            kind = rand.random()
            if kind < 0.1:  # a misspelt or unknown key
                path = path[:-1] + (path[-1] + rand.choice(('s', '_', 'x')),)
                _set(tree, path, 1)
            elif kind < 0.15 and len(path) > 1:  # a section replaced by a value
                path = path[:1]
                tree[path[0]] = rand.choice((None, 3, 'x'))
                paths = list(_leaves(tree))
            else:
                _set(tree, path, rand.choice(_mutations(_get(tree, path))))
            mutated.add('.'.join(path))
        try:
            config = config_from_dict(tree)
        except ConfigError as e:
            message = str(e)
            assert '\n' not in message, message
            # It names what was changed (a contradiction may be named from its other side: same section).
            named = message.split(':')[0].split('[')[0]
            assert named in mutated or any(key.split('.')[0] == named.split('.')[0] for key in mutated), (mutated, message)
            rejected += 1
            continue
        _run_one_step(config, tmp_path / str(trial))
        accepted += 1
    print(f"{accepted} accepted, {rejected} rejected")
    assert accepted > 30 and rejected > 100, (accepted, rejected)
