"""Images end to end on the CPU: a few training steps of each image config, sampling to PNGs,
guidance, and the metric path (classifier Fréchet distance and FID with stand-in Inception weights)."""

import json
import math

import pytest
import torch

import fid
import sample
import train
from sampling_model import load_model

pytestmark = pytest.mark.slow

TINY = ['trainer.max_steps=3', 'trainer.batch_size=4', 'trainer.log_every=1', 'trainer.plot_every=3',
        'trainer.ckpt_every=3', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
        'noise.spectrum_samples=256', 'noise.num_bins=8']


@pytest.mark.parametrize('config, extra', [
    ('configs/mnist/small.yaml', ['network.preset=ddpmpp-tiny']),
    ('configs/mnist/fast.yaml', []),
    ('configs/mnist/mp.yaml', []),
    ('configs/mnist/small.yaml', ['network.preset=ddpmpp-tiny', 'noise.name=entropic', 'noise.density=structure',
                                  'noise.warmup_steps=1', 'noise.refresh_every=1']),
])
def test_image_configs_train_a_few_steps(config, extra, tmp_path):
    train.main(['--config', config, *TINY, *extra, f'run_dir={tmp_path}'])
    model = load_model(tmp_path / 'checkpoints' / 'last.ckpt', device='cpu')
    assert model.is_image_model
    x = model.sample(2, steps=2, class_label=3)
    assert x.shape == (2, *model.shape) and torch.isfinite(x).all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert 'samples' in EventAccumulator(str(tmp_path / 'tensorboard'), size_guidance={'images': 0}).Reload().Tags()['images']


def test_cifar10_paper_config_builds_the_56m_network(tmp_path, monkeypatch):
    import torchvision

    from tests.test_images import write_cifar10
    from config import load_config
    from training.module import EDMModule
    write_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)
    config = load_config('configs/cifar10/ddpmpp.yaml', [f'data.root={tmp_path}', 'noise.spectrum_samples=256'])
    model = EDMModule(config)
    assert sum(p.numel() for p in model.denoiser.parameters()) == 55_732_739
    assert model.dataset.shape == (3, 32, 32) and model.dataset.xflip


@pytest.fixture(scope='module')
def mnist_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('runs') / 'mnist'
    train.main(['--config', 'configs/mnist/small.yaml', *TINY, 'network.preset=ddpmpp-tiny', f'run_dir={run_dir}'])
    return run_dir


def test_guidance_zero_is_the_unconditional_model(mnist_run):
    model = load_model(mnist_run / 'checkpoints' / 'last.ckpt', device='cpu')
    # Make the labels matter: the freshly initialised label map has almost no effect.
    torch.manual_seed(0)
    for p in model.denoiser.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    unconditional = model.sample(3, steps=3, seed=1)
    assert torch.equal(model.sample(3, steps=3, seed=1, class_label=7, guidance=0.0), unconditional)
    conditional = model.sample(3, steps=3, seed=1, class_label=7, guidance=1.0)
    assert not torch.allclose(conditional, unconditional)
    guided = model.sample(3, steps=3, seed=1, class_label=7, guidance=2.0)
    assert not torch.allclose(guided, conditional)


def test_seeds_draw_one_class_per_seed_from_the_seed_as_edm_does(mnist_run, tmp_path):
    """Without --class, a class-conditional model draws each sample's class from its own seed, after its
    initial noise (NVlabs/edm's generate.py), so an FID over --seeds measures the conditional model;
    --class none is the unconditional model."""
    from torchvision.io import read_image

    from evaluation import plots
    from sampling_model import RANDOM_CLASS
    # Make the labels matter (a few steps of training leave the label map almost without effect): a wrong
    # class then moves a sample by ~40, the batch size by < 1e-3.
    checkpoint, generator = torch.load(mnist_run / 'checkpoints' / 'last.ckpt', weights_only=True), torch.Generator().manual_seed(0)
    for name, value in checkpoint['cedm']['ema'].items():
        if name.startswith('ema_model.') and value.is_floating_point():
            value.add_(0.05 * torch.randn(value.shape, generator=generator))
    ckpt = str(tmp_path / 'labels-matter.ckpt')
    torch.save(checkpoint, ckpt)
    model = load_model(ckpt, device='cpu')
    seeds = [0, 1, 2, 3, 17]
    classes = []
    for seed in seeds:
        stream = torch.Generator().manual_seed(seed)
        torch.randn(model.shape, generator=stream)  # the initial noise comes first
        classes.append(int(torch.randint(model.num_classes, (), generator=stream)))
    assert len(set(classes)) > 1
    drawn = model.sample(seeds=seeds, steps=2, class_label=RANDOM_CLASS)
    for i, (seed, k) in enumerate(zip(seeds, classes)):
        torch.testing.assert_close(drawn[i], model.sample(seeds=[seed], steps=2, class_label=k)[0], rtol=0, atol=1e-2)
    for flags, expected in (([], drawn), (['--class', 'none'], model.sample(seeds=seeds, steps=2, class_label=None))):
        out = tmp_path / f'out{len(flags)}'
        sample.main(['--ckpt', ckpt, '--seeds', '0-3,17', '--steps', '2', '--quiet', '--out', str(out), *flags])
        written = torch.stack([read_image(str(out / f'{seed:06d}.png')) for seed in seeds])
        assert torch.equal(written, plots.to_uint8(expected))
    assert (plots.to_uint8(drawn) != written).float().mean() > 0.05  # per-seed classes are not the unconditional model


def test_sample_writes_grid_and_one_png_per_seed(mnist_run, tmp_path, capsys):
    out = tmp_path / 'images'
    sample.main(['--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt'), '--seeds', '0-9', '--batch', '4', '--steps', '2',
                 '--class', '3', '--guidance', '1.5', '--out', str(out)])
    assert sorted(p.name for p in out.glob('0*.png')) == [f'{s:06d}.png' for s in range(10)]
    assert (out / 'grid.png').stat().st_size > 100
    from torchvision.io import read_image
    assert read_image(str(out / '000004.png')).shape == (1, 32, 32)  # grey stays grey
    err = _one_line(capsys, sample.main, ['--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt'), '--class', '12'])
    assert '--class: must be in 0..9 (got 12)' in err
    import metrics
    assert "an image model; its metrics are fid.py's" in _one_line(capsys, metrics.main, ['--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt')])


def test_class_grid_has_one_row_per_class(mnist_run, tmp_path, capsys):
    from torchvision.io import read_image
    ckpt = str(mnist_run / 'checkpoints' / 'last.ckpt')
    out = tmp_path / 'grid'
    sample.main(['--ckpt', ckpt, '--class', '2,5,7', '--num', '4', '--steps', '2', '--guidance', '2', '--out', str(out)])
    grid = read_image(str(out / 'grid.png'))
    assert grid.shape[-2:] == (3 * 34 + 2, 4 * 34 + 2)  # 3 rows × 4 images of 32 px, 2 px padding
    # Row k is class k's samples from the same seed: what sampling class 5 alone gives.
    model = load_model(ckpt, device='cpu')
    row = read_image(str(out / 'grid.png'))[..., 36:68, 2:34]
    from evaluation import plots
    alone = plots.to_uint8(model.sample(4, steps=2, seed=0, class_label=5, guidance=2.0))[0]
    assert torch.equal(row[:1], alone)
    assert 'with several classes' in _one_line(capsys, sample.main, ['--ckpt', ckpt, '--class', '1-2', '--seeds', '0-3'])
    assert '--class: must be in 0..9 (got 10)' in _one_line(capsys, sample.main, ['--ckpt', ckpt, '--class', '8-10'])


def _one_line(capsys, fn, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        fn(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def _write_pngs(images, folder):
    from evaluation import plots
    for i, image in enumerate(images):
        plots.save_image(image, folder / f'{i:06d}.png')


def test_classifier_frechet_distance_orders_real_collapsed_and_noise(mnist_run, tmp_path, capsys):
    """Real digits (not among the reference images) score far better than one digit class alone
    (mode collapse), which scores better than noise, by KID and FID alike."""
    from evaluation.fidelity import ReferenceImages
    from datasets.images import mnist_5k
    data = mnist_5k()
    held_out = torch.ones(len(data), dtype=torch.bool)
    held_out[ReferenceImages(data, 1000).index] = False  # the digits fid.py compares with
    real, ones, noise = tmp_path / 'real', tmp_path / 'ones', tmp_path / 'noise'
    shuffle = torch.randperm(int(held_out.sum()), generator=torch.Generator().manual_seed(1))  # the file is sorted by class
    _write_pngs(data.images[held_out][shuffle[:200]], real)
    _write_pngs(data.images[held_out & (data.labels == 1)][:200], ones)
    _write_pngs(torch.randint(0, 256, (200, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), noise)
    ckpt, cache = str(mnist_run / 'checkpoints' / 'last.ckpt'), tmp_path / 'cache'
    results = {}
    for name, folder in (('real', real), ('ones', ones), ('noise', noise)):
        fid.main(['--images', str(folder), '--ckpt', ckpt, '--features', 'classifier', '--cache-dir', str(cache),
                  '--metrics', 'fid,kid', '--num-reference', '1000', '--json', str(tmp_path / f'{name}.json')])
        results[name] = json.loads((tmp_path / f'{name}.json').read_text())
    out = capsys.readouterr().out
    accuracy = float(out.split('held-out accuracy ')[1].split(';')[0])
    assert accuracy > 0.9 and out.count('trained the digit classifier') == 1  # trained once, then cached
    kid = {name: r['kernel_classifier_distance_mean'] for name, r in results.items()}
    fd = {name: r['frechet_classifier_distance'] for name, r in results.items()}
    assert 3 * kid['real'] < kid['ones'] < kid['noise'] and fd['real'] < fd['ones'] < fd['noise']


def test_fid_with_stand_in_inception_weights(mnist_run, tmp_path, monkeypatch, capsys):
    """The Inception path with randomly initialised weights: plumbing only, the numbers mean nothing."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    with monkeypatch.context() as patch:
        patch.setattr(inception, 'load_state_dict_from_url', lambda *args, **kwargs: None)
        patch.setattr(inception.FeatureExtractorInceptionV3, 'load_state_dict', lambda self, state: None)
        torch.manual_seed(0)
        stand_in = inception.FeatureExtractorInceptionV3('inception-v3-compat', ['2048'])
    weights = tmp_path / 'inception-stand-in.pth'
    torch.save(stand_in.state_dict(), weights)
    images = tmp_path / 'images'
    sample.main(['--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt'), '--seeds', '0-7', '--steps', '2', '--out', str(images)])
    fid.main(['--images', str(images), '--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt'), '--fid-weights', str(weights),
              '--metrics', 'fid,kid', '--num-reference', '8', '--cache-dir', str(tmp_path / 'cache'),
              '--json', str(tmp_path / 'fid.json')])
    result = json.loads((tmp_path / 'fid.json').read_text())
    assert {'frechet_inception_distance', 'kernel_inception_distance_mean'} <= set(result)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values())
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'empty-hub'))
    err = _one_line(capsys, fid.main, ['--images', str(images), '--ckpt', str(mnist_run / 'checkpoints' / 'last.ckpt')])
    assert "none in torch-fidelity's cache" in err and '--fid-weights' in err


def test_posthoc_ema_reconstructs_a_tracked_profile_and_survives_resume(mnist_run, tmp_path, capsys):
    run_dir = tmp_path / 'run'
    common = ['--config', 'configs/mnist/small.yaml', *TINY, 'network.preset=ddpmpp-tiny', 'ema.posthoc=true',
              'ema.snapshot_every=2', 'trainer.ckpt_every=4', f'run_dir={run_dir}']
    train.main(common + ['trainer.max_steps=9'])  # neither ckpt_every nor snapshot_every divides it
    snapshots = sorted(p.name for p in (run_dir / 'posthoc-ema').glob('*.pt'))
    assert snapshots == sorted(f'{i}.{s}.pt' for i in (0, 1) for s in (2, 4, 6, 8))
    ckpt = run_dir / 'checkpoints' / 'last.ckpt'
    model = load_model(ckpt, device='cpu')
    posthoc = torch.load(ckpt, weights_only=True)['cedm']['posthoc_ema']
    prefix = 'ema_models.1.ema_model.'  # the tracked EMA of σ_rel 0.10
    tracked = {name[len(prefix):]: value for name, value in posthoc.items() if name.startswith(prefix)}
    model.use_posthoc_ema(0.10)  # a tracked width at the last snapshot: the least squares reproduce it
    weights = dict(model.denoiser.named_parameters())
    assert tracked.keys() >= weights.keys()
    for name, p in weights.items():
        torch.testing.assert_close(p, tracked[name], rtol=1e-3, atol=1e-4)
    model.use_posthoc_ema(0.07)
    assert not all(torch.allclose(p, tracked[name]) for name, p in model.denoiser.named_parameters())
    # Resuming from step 4 drops the snapshots of steps 6 and 8, which that run had not reached.
    train.main(common + ['--resume', str(run_dir / 'checkpoints' / 'step-0000004.ckpt'), 'trainer.max_steps=7'])
    assert sorted(p.name for p in (run_dir / 'posthoc-ema').glob('*.pt')) == sorted(f'{i}.{s}.pt' for i in (0, 1) for s in (2, 4, 6))
    assert torch.load(ckpt, weights_only=True)['global_step'] == 7
    out = tmp_path / 'samples'
    sample.main(['--ckpt', str(ckpt), '--posthoc-sigma-rel', '0.08', '--num', '4', '--steps', '2', '--out', str(out)])
    assert (out / 'grid.png').is_file()
    plain = str(mnist_run / 'checkpoints' / 'last.ckpt')  # trained without ema.posthoc
    assert 'kept no post-hoc EMA' in _one_line(capsys, sample.main, ['--ckpt', plain, '--posthoc-sigma-rel', '0.1'])


def test_offline_profile_of_a_class_conditional_model_and_its_one_line_refusal_without_one(mnist_run, tmp_path, capsys):
    import plot_profile
    ckpt = str(mnist_run / 'checkpoints' / 'last.ckpt')
    model = load_model(ckpt, device='cpu')
    assert model.num_classes and not model.profile.num_refreshes  # 3 steps: never refreshed
    profile = model.estimate_profile(num_points=6, samples_per_point=16)
    sigma, mmse = profile.mmse()
    assert torch.isfinite(mmse).all() and (mmse[1:] >= 0).all()
    loc, scale = profile.fit_logistic()  # the logistic log-SNR fit of an image profile
    assert math.isfinite(loc) and scale > 0
    err = _one_line(capsys, plot_profile.main, ['--ckpt', ckpt, '--out', str(tmp_path / 'p.png')])
    assert 'its profile was never refreshed' in err and '--estimate-profile' in err
