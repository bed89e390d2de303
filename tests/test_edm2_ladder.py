"""EDM2's ablation ladder (Karras et al. 2024, Table 1: CONFIGS C → D → E → F → G) as switches of the
one MPUNet in networks/mp_unet.py: the defaults are today's network (G) bit for bit, each rung
differs from the next by its documented switch alone, each switch does what it says, the parameter
counts match the stated ones and the paper's, and the ladder configs build and train."""

import hashlib
import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml

from networks.mp_unet import (CONFIGS, LADDER, SHAPES, Block, MPConv, MPFourier, MPUNet, group_rms_norm, mp_unet,
                              resample)
from networks.precond import EDMPrecond

FLAGS = ('mp_learned', 'forced_weight_norm', 'group_norm', 'mp_fixed')
RUNGS = 'CDEFG'
BASES = ('mnist', 'mnist-small', 'cifar10')
TINY = dict(img_resolution=28, img_channels=1, model_channels=8, channel_mult=(1, 2, 2), num_blocks=1,
            attn_resolutions=(7, 8), logvar_channels=16)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rms(t):
    return t.detach().float().pow(2).mean().sqrt().item()


def tiny(rung='G', seed=0, **kwargs):
    torch.manual_seed(seed)
    return MPUNet(**{**TINY, **LADDER[rung], **kwargs})


def count(net):
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# G is today's network.


def test_default_switches_are_config_g_and_todays_network():
    defaults = inspect.signature(MPUNet).parameters
    assert {f: defaults[f].default for f in FLAGS} == {f: LADDER['G'][f] for f in FLAGS}
    assert inspect.signature(Block).parameters['clip_act'].default == LADDER['G']['clip_act']
    # Recorded with networks/mp_unet.py as it was before the ladder (git 50c232e), same seed: the
    # parameter names and shapes, the initial values, and the outputs after two Adam steps in train
    # mode (dropout, forced weight normalisation) are unchanged.
    torch.manual_seed(0)
    net = MPUNet(**TINY, label_dim=10, dropout=0.1)
    sd = net.state_dict()
    layout = ';'.join(f'{k}:{tuple(v.shape)}' for k, v in sd.items())
    assert len(sd) == 86 and hashlib.sha256(layout.encode()).hexdigest()[:16] == '4612fd64077aa640'
    assert sum(v.double().sum().item() for v in sd.values()) == pytest.approx(-261.29814729440113, rel=1e-12)
    assert sum(v.double().abs().sum().item() for v in sd.values()) == pytest.approx(60345.596479414955, rel=1e-12)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('gain'):
                p.fill_(0.5)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    x, labels, c_noise = torch.randn(3, 1, 28, 28, generator=gen(1)), torch.eye(10)[[1, 4, 7]], torch.tensor([-1.0, 0, 1])
    for step in range(2):
        torch.manual_seed(10 + step)
        loss = net.train()(x, c_noise, labels).pow(2).mean() + net.logvar(c_noise).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = net.eval()(x, c_noise, labels)
        logvar = net.logvar(c_noise)
    # The signed sum cancels (|sum| is 3% of the absolute sum): its float noise across CPUs and thread
    # counts is held to the scale of the absolute sum.
    assert out.double().abs().sum().item() == pytest.approx(514.0880359597504, rel=1e-5)
    assert out.double().sum().item() == pytest.approx(-14.125141304102726, abs=1e-5 * 514.088)
    torch.testing.assert_close(out[:, 0, 10, 10:13], torch.tensor(
        [[-0.07054468244314194, -0.026665495708584785, 0.3000852167606354],
         [0.1712125837802887, 0.4048406779766083, -0.5729600787162781],
         [-0.32537978887557983, -0.08371905237436295, -0.1157604530453682]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logvar, torch.tensor([-0.8240498304367065, 0.10898789763450623, -0.3329659104347229]),
                               rtol=1e-5, atol=1e-6)
    # After two Adam steps of 0.02, a wrong update moves this sum by far more than another CPU's rounding (2e-9).
    assert sum(v.double().abs().sum().item() for v in net.state_dict().values()) == pytest.approx(60532.08886220495,
                                                                                                rel=1e-7)


# ---------------------------------------------------------------------------------------------
# The presets and the ladder.


def test_each_rung_is_the_previous_one_plus_its_switch():
    # Paper §2: D adds magnitude-preserving learned layers, E forced weight normalisation, F removes
    # the group norms, G adds the magnitude-preserving fixed-function layers (and its clipping).
    assert {f: LADDER['C'][f] for f in FLAGS} == dict(mp_learned=False, forced_weight_norm=False, group_norm=True,
                                                        mp_fixed=False)
    expected = {'D': {'mp_learned'}, 'E': {'forced_weight_norm'}, 'F': {'group_norm'}, 'G': {'mp_fixed', 'clip_act'}}
    for before, after in zip(RUNGS, RUNGS[1:]):
        changed = {k for k in LADDER[after] if LADDER[after][k] != LADDER[before][k]}
        assert changed == expected[after], (before, after, changed)
    with pytest.raises(ValueError, match='forced_weight_norm needs mp_learned'):
        MPUNet(**TINY, mp_learned=False, forced_weight_norm=True)


@pytest.mark.parametrize('base', BASES)
def test_presets_differ_from_g_only_by_the_ladder_switches(base):
    for rung in 'CDEF':
        assert CONFIGS[f'{base}-{rung}'] == {**CONFIGS[base], **LADDER[rung]}
        assert SHAPES[f'{base}-{rung}'] == SHAPES[base]
    # A preset is architecture only: the data's size and channels come from the registry, which
    # passes them as keywords (a preset holding them could not be built from a config).
    assert not {'img_resolution', 'img_channels', 'label_dim'} & set(CONFIGS[base])


def test_presets_build_from_a_config_with_the_data_shape():
    from networks import build_denoiser
    from config import NetworkConfig, PrecondConfig
    for preset, expected in [('mnist', LADDER['G']), ('mnist-small-C', LADDER['C']), ('mnist-small-E', LADDER['E'])]:
        torch.manual_seed(0)
        denoiser = build_denoiser(NetworkConfig(name='mp-unet', preset=preset), PrecondConfig(), (1, 28, 28), 10)
        net = denoiser.model
        assert {f: getattr(net, f) for f in FLAGS} == {f: expected[f] for f in FLAGS}
        assert (net.img_channels, net.img_resolution, net.label_dim) == (1, 28, 10)
        # Same network as mp_unet() with the same seed.
        torch.manual_seed(0)
        reference = mp_unet(preset, label_dim=10)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# What each switch does.


def mpconvs(net):
    return [m for m in net.modules() if isinstance(m, MPConv)]


def row_rms(w):
    return w.detach().flatten(1).pow(2).mean(1).sqrt()


def test_mp_learned_and_forced_weight_norm():
    x = torch.randn(16, 64, 6, 6, generator=gen())
    # C: a plain layer with EDM's uniform init U(±√(3/fan_in)); its output scales with the weight.
    torch.manual_seed(0)
    plain = MPConv(64, 32, [3, 3], weight_norm='none')
    bound = math.sqrt(3 / 576)
    assert plain.weight.abs().max() <= bound and plain.weight.abs().max() > 0.99 * bound
    assert rms(plain.weight) == pytest.approx(math.sqrt(1 / 576), rel=0.03)
    y = plain(x)
    assert rms(y) == pytest.approx(1, abs=0.15)  # unit-variance preserving at init
    with torch.no_grad():
        plain.weight.mul_(10)
    torch.testing.assert_close(plain(x), 10 * y, rtol=1e-4, atol=1e-4)
    # D and E: blind to the stored scale; N(0, 1) init.
    for mode in ('standard', 'forced'):
        torch.manual_seed(0)
        conv = MPConv(64, 32, [3, 3], weight_norm=mode).eval()
        assert rms(conv.weight) == pytest.approx(1, abs=0.05)
        y = conv(x)
        with torch.no_grad():
            conv.weight.mul_(10)
        torch.testing.assert_close(conv(x), y, rtol=1e-3, atol=1e-3)
    # Whole nets: after an Adam step the stored weights are off the unit sphere; a training forward
    # pulls them back in E-G only (D lets them drift: the paper's Fig. 3 weight growth), and never
    # touches C's.
    for rung, rewrites in [('C', False), ('D', False), ('E', True), ('F', True), ('G', True)]:
        net = tiny(rung, label_dim=10).train()
        before = [c.weight.detach().clone() for c in mpconvs(net)]
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        xs, labels = torch.randn(2, 1, 28, 28, generator=gen()), torch.eye(10)[:2]
        loss = net(xs, torch.zeros(2), labels).pow(2).mean() + net.logvar(torch.zeros(2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        stepped = [c.weight.detach().clone() for c in mpconvs(net)]
        assert any(not torch.equal(a, b) for a, b in zip(before, stepped))
        with torch.no_grad():
            net(xs, torch.zeros(2), labels)
            net.logvar(torch.zeros(2))
        after = [c.weight.detach() for c in mpconvs(net)]
        if rewrites:
            for w in after:
                torch.testing.assert_close(row_rms(w), torch.ones(w.shape[0]), atol=1e-3, rtol=0)
        else:
            assert all(torch.equal(a, b) for a, b in zip(stepped, after)), rung
        assert {c.weight_norm for c in mpconvs(net)} == {'C': {'none'}, 'D': {'standard'}}.get(rung, {'forced'})


def test_group_norm_switch():
    # Eq. 29: unit RMS per sample and group of channels, no mean subtraction.
    x = torch.randn(2, 64, 5, 5, generator=gen()) + 3
    y = group_rms_norm(x)
    groups = y.reshape(2, 16, -1)  # min(32, 64 // 4) = 16 groups of 4 channels
    torch.testing.assert_close(groups.pow(2).mean(2), torch.ones(2, 16), atol=1e-3, rtol=0)
    assert y.mean() > 0.5  # the mean survives (a GroupNorm would remove it)
    scale = torch.rand(1, 16, 1, 1, generator=gen(1)).repeat_interleave(4, dim=1) + 0.5
    torch.testing.assert_close(group_rms_norm(x * scale), y, atol=1e-4, rtol=1e-4)
    assert group_rms_norm(torch.randn(1, 22, 3, 3)).shape == (1, 22, 3, 3)  # 22 channels: 2 groups of 11
    emb = torch.randn(2, 32, generator=gen(2))
    x = torch.randn(2, 16, 8, 8, generator=gen(3))
    for rung in RUNGS:
        kwargs = dict(weight_norm='none' if rung == 'C' else 'forced', group_norm=LADDER[rung]['group_norm'],
                      mp_fixed=LADDER[rung]['mp_fixed'])
        torch.manual_seed(0)
        enc = Block(16, 32, 32, flavor='enc', **kwargs).eval()
        # C-E: ADM's branch maps in → out channels; F, G apply the 1×1 conv first (+ weights).
        assert enc.conv_res0.in_channels == (16 if kwargs['group_norm'] else 32)
        torch.manual_seed(0)
        keep = Block(16, 16, 32, flavor='enc', **kwargs).eval()
        s = 5.0
        with torch.no_grad():
            if kwargs['group_norm']:
                # The branch sees only group-normalised input: block(s·x) − s·x = block(x) − x.
                torch.testing.assert_close(keep(s * x, emb) - s * x, keep(x, emb) - x, atol=1e-4, rtol=1e-4)
            else:
                # F, G pixel-normalise the encoder's main path: blind to the input's scale.
                torch.testing.assert_close(keep(s * x, emb), keep(x, emb), atol=1e-4, rtol=1e-4)
    # C-E normalise the first conv's output too (before the embedding modulation), so a block is
    # blind to that conv's weight scale; and the output block normalises the decoder's output.
    for rung in RUNGS:
        gn = LADDER[rung]['group_norm']
        torch.manual_seed(0)
        block = Block(16, 16, 32, flavor='dec', weight_norm='none', group_norm=gn, mp_fixed=LADDER[rung]['mp_fixed'])
        y = block(x, emb)
        with torch.no_grad():
            block.conv_res0.weight.mul_(5)
        assert torch.allclose(block(x, emb), y, atol=2e-3, rtol=2e-3) == gn, rung  # up to GN's eps
        net = tiny(rung, mp_learned=False, forced_weight_norm=False).eval()
        if net.out_gain is not None:
            net.out_gain.data.fill_(1.0)  # G's output starts at exactly 0
        x_img = torch.randn(2, 1, 28, 28, generator=gen(4))
        out = net(x_img, torch.zeros(2))
        net.dec[list(net.dec)[-1]].register_forward_hook(lambda m, i, o: 5 * o)
        assert torch.allclose(net(x_img, torch.zeros(2)), out, atol=2e-3, rtol=2e-3) == gn, rung
    # Downsampling happens on both paths in C-E, on the main path first in F, G: same shapes.
    for gn in (True, False):
        block = Block(16, 16, 32, flavor='dec', resample_mode='up', group_norm=gn, mp_fixed=not gn)
        assert block(torch.randn(1, 16, 4, 4), emb[:1], size=(7, 7)).shape == (1, 16, 7, 7)
    # The two-layer embedding MLP is C-E's.
    for rung in RUNGS:
        assert (tiny(rung).emb_noise2 is not None) == LADDER[rung]['group_norm']


def test_mp_fixed_switch():
    # Fourier features: √2-scaled to unit RMS in G, plain cosines (RMS 1/√2) below.
    c = torch.linspace(-1.6, 1.1, 64)
    torch.manual_seed(0)
    mp = MPFourier(1024)
    torch.manual_seed(0)
    plain = MPFourier(1024, magnitude_preserving=False)
    assert rms(mp(c)) == pytest.approx(1, abs=0.05)
    torch.testing.assert_close(mp(c), math.sqrt(2) * plain(c))
    for rung in RUNGS:
        net = tiny(rung, label_dim=10).eval()
        gains = [n for n, _ in net.named_parameters() if n.endswith('gain') and not n.startswith('logvar')]
        x, labels = torch.randn(2, 1, 28, 28, generator=gen()), torch.eye(10)[:2]
        out = net(x, torch.tensor([-1.0, 1.0]), labels)
        assert out.isfinite().all()
        if LADDER[rung]['mp_fixed']:
            # Zero-initialised output and per-block embedding gains: F ≡ 0 at init.
            assert len(gains) == 1 + len(net.enc) + len(net.dec) - 1 and out.abs().max() == 0
        else:
            # No gains, no zero init (the paper drops it in C): the net starts nonzero and
            # already depends on σ and the class.
            assert gains == [] and net.out_gain is None and out.abs().max() > 1e-3
            same = net(x[:1].expand(2, -1, -1, -1), torch.tensor([-1.0, 1.0]), labels[:1].expand(2, -1))
            assert (same[0] - same[1]).abs().max() > 1e-4
            assert (net(x, torch.zeros(2), labels) - net(x, torch.zeros(2))).abs().max() > 1e-4
    # Inside a block: MP-SiLU and the 30 % MP-sum in G, SiLU and + below (same weights, same input).
    x, emb = torch.randn(4, 32, 8, 8, generator=gen(5)), torch.randn(4, 32, generator=gen(6))
    for mp_fixed in (True, False):
        torch.manual_seed(0)
        block = Block(32, 32, 32, flavor='dec', mp_fixed=mp_fixed).eval()
        seen = {}
        block.conv_res0.register_forward_hook(lambda m, i, o: seen.setdefault('res0_in', i[0]))
        block.conv_res1.register_forward_hook(lambda m, i, o: seen.setdefault('branch', o))
        out = block(x, emb)
        if mp_fixed:
            torch.testing.assert_close(seen['res0_in'], torch.nn.functional.silu(x) / 0.596)
            torch.testing.assert_close(out, (0.7 * x + 0.3 * seen['branch']) / math.sqrt(0.7 ** 2 + 0.3 ** 2))
        else:
            torch.testing.assert_close(seen['res0_in'], torch.nn.functional.silu(x))
            torch.testing.assert_close(out, x + seen['branch'])
    # The decoder's skip concatenations: MP-cat in G (equal contributions whatever the widths),
    # torch.cat below. Every encoder output is a skip, consumed in reverse by the 'block' entries.
    for rung in 'FG':
        net = tiny(rung).eval()
        skips, joined = [], []
        for block in net.enc.values():
            block.register_forward_hook(lambda m, i, o: skips.append(o))
        for name, block in net.dec.items():
            if 'block' in name:
                block.register_forward_pre_hook(lambda m, args: joined.append(args[0]))
        net(torch.randn(2, 1, 28, 28, generator=gen(7)), torch.zeros(2))
        assert len(joined) == len(skips)
        widths = set()
        for skip, cat in zip(reversed(skips), joined):
            na, nb = cat.shape[1] - skip.shape[1], skip.shape[1]
            widths.add(na == nb)
            scale = math.sqrt((na + nb) / 0.5) / math.sqrt(nb) * 0.5 if rung == 'G' else 1.0
            torch.testing.assert_close(cat[:, na:], scale * skip)
        assert widths == {True, False}  # unequal widths occur, where MP-cat differs from cat


# ---------------------------------------------------------------------------------------------
# Parameter counts.

# Stated counts of every preset (unconditional, logvar head included; the comments in
# networks/mp_unet.py). D = C and E = C (D, E add no weights), F = G less G's scalar gains.
STATED = {
    'mnist': 1_687_543, 'mnist-small': 300_609, 'cifar10': 267_055_078,
    'mnist-C': 1_673_185, 'mnist-small-C': 297_009, 'cifar10-C': 264_658_881,
    'mnist-F': 1_687_521, 'mnist-small-F': 300_593, 'cifar10-F': 267_055_041,
}


@pytest.mark.parametrize('base', BASES)
def test_preset_parameter_counts(base):
    counts = {}
    for rung in RUNGS:
        name = base if rung == 'G' else f'{base}-{rung}'
        with torch.device('meta'):  # no memory, no init
            counts[rung] = count(mp_unet(name))
    assert counts['G'] == STATED[base]
    assert counts['C'] == counts['D'] == counts['E'] == STATED[f'{base}-C']
    assert counts['F'] == STATED[f'{base}-F']
    with torch.device('meta'):
        net = mp_unet(base)
    assert counts['G'] - counts['F'] == 1 + len(net.enc) - 1 + len(net.dec)  # the scalar gains


def edm2_img512(channels, rung):
    """The paper's ImageNet-512 network (NVlabs/edm2 train_edm2.py presets edm2-img512-*): 64×64×4
    latents, 1000 classes, channel_mult 1-2-3-4, 3 blocks per level, attention at 16 and 8."""
    return MPUNet(img_resolution=64, img_channels=4, label_dim=1000, model_channels=channels,
                  channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8), **LADDER[rung])


def test_parameter_counts_match_the_paper():
    # Table 1 (EDM2-S layout, model_channels 192): C, D, E 277.8 M; F, G 280.2 M.
    table1 = {'C': 277.8, 'D': 277.8, 'E': 277.8, 'F': 280.2, 'G': 280.2}
    counts = {}
    for rung, mparams in table1.items():
        with torch.device('meta'):
            counts[rung] = count(edm2_img512(192, rung))
        assert round(counts[rung] / 1e6, 1) == mparams, (rung, counts[rung])
    # The difference is F's, to the weight: the first encoder block of levels 1-3 gets its 3×3
    # conv at the new width (192·9·(384 + 576 + 768)), the 768×768 embedding layer goes, G adds
    # one scalar gain per block and the output's (16 encoder, 20 decoder blocks).
    assert counts['F'] - counts['E'] == 192 * 9 * (384 + 576 + 768) - 768 * 768
    assert counts['G'] - counts['F'] == 16 + 20 + 1
    # Table 2 (and 5): G at every size, in millions as printed.
    table2 = {128: 125, 192: 280, 256: 498, 320: 777, 384: 1119, 448: 1523}
    for channels, mparams in table2.items():
        with torch.device('meta'):
            assert round(count(edm2_img512(channels, 'G')) / 1e6) == mparams, channels


# ---------------------------------------------------------------------------------------------
# Every rung trains.


@pytest.mark.parametrize('rung', RUNGS)
def test_every_rung_trains_and_runs_under_bf16(rung):
    net = tiny(rung, img_resolution=16, channel_mult=(1, 2), attn_resolutions=(8,), label_dim=10).train()
    denoiser = EDMPrecond(net)
    images = resample(resample(0.5 * torch.randn(8, 1, 4, 4, generator=gen()), 'up'), 'up')  # smooth, [8, 1, 16, 16]
    sigma, noise = torch.full((8,), 0.5), torch.randn(8, 1, 16, 16, generator=gen(1))

    def loss():
        d = denoiser(images + sigma[:, None, None, None] * noise, sigma)
        return (denoiser.loss_weight(sigma)[:, None, None, None] * (d - images) ** 2).mean()

    opt = torch.optim.Adam(net.parameters(), lr=0.01 if LADDER[rung]['mp_learned'] else 0.002)
    first = loss().item()
    for _ in range(20):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
    assert loss().item() < 0.8 * first
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 16, 16, generator=gen(2)), torch.tensor([-1.0, 0.5]), torch.eye(10)[:2])
        value = out.float().pow(2).mean() + net.logvar(torch.tensor([-1.0, 0.5])).sum()
    value.backward()
    assert value.isfinite() and all(p.grad is None or p.grad.isfinite().all() for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# The configs.

CONFIG_FILES = {(data, rung): Path(f'configs/{data}/edm2-{rung}.yaml') for data in ('mnist', 'cifar10') for rung in 'CEG'}
# What may differ between the rungs' files, besides comments: the preset and the optimiser.
RUNG_KEYS = {('network', 'preset'), ('optim', 'lr'), ('optim', 'schedule'), ('optim', 'ref_steps')}


def flat(values, prefix=()):
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


@pytest.mark.parametrize('data', ['mnist', 'cifar10'])
def test_ladder_configs_differ_only_by_rung(data):
    from config import load_config
    base = {'mnist': 'mnist-small', 'cifar10': 'cifar10'}[data]
    files = {rung: flat(yaml.safe_load(CONFIG_FILES[data, rung].read_text())) for rung in 'CEG'}
    for rung in 'CE':
        assert {k for k in files[rung].keys() | files['G'].keys() if files[rung].get(k) != files['G'].get(k)} <= RUNG_KEYS
    for rung in 'CEG':
        config = load_config(CONFIG_FILES[data, rung])
        assert config.network.name == 'mp-unet' and config.network.learned_weighting
        assert config.network.preset == (base if rung == 'G' else f'{base}-{rung}')
        # C decays no learning rate (t_ref = ∞); E, G use the inverse square-root decay.
        assert config.optim.schedule == ('constant' if rung == 'C' else 'edm2')
        assert config.optim.lr == pytest.approx(0.01) or rung == 'C'


@pytest.mark.slow
@pytest.mark.parametrize('rung', 'CEG')
def test_mnist_ladder_configs_train_a_few_steps(rung, tmp_path):
    import train
    from sampling_model import load_model
    train.main(['--config', str(CONFIG_FILES['mnist', rung]), 'trainer.max_steps=3', 'trainer.batch_size=4',
                'trainer.log_every=1', 'trainer.plot_every=3', 'trainer.ckpt_every=3', 'trainer.progress_bar=false',
                'sample.num=4', 'sample.steps=2', 'noise.spectrum_samples=256', 'noise.num_bins=8',
                f'run_dir={tmp_path}'])
    model = load_model(tmp_path / 'checkpoints' / 'last.ckpt', device='cpu')
    # The checkpoint rebuilds the rung it was trained as (from the config's preset).
    for denoiser in (model.denoiser, model.raw_denoiser):
        assert {f: getattr(denoiser.model, f) for f in FLAGS} == {f: LADDER[rung][f] for f in FLAGS}
    x = model.sample(2, steps=2, class_label=3)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()
