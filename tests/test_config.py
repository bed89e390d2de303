import dataclasses

import pytest

from config import ConfigError, config_from_dict, config_to_dict, load_config, parse_overrides

DEFAULT = 'configs/toy/default.yaml'


def test_default_loads_with_edm_constants():
    config = load_config(DEFAULT)
    assert config.name == 'default'
    assert (config.noise.P_mean, config.noise.P_std, config.precond.sigma_data) == (-1.2, 1.2, 0.5)
    assert (config.sample.sigma_min, config.sample.sigma_max, config.sample.rho, config.sample.steps) == (0.002, 80.0, 7.0, 18)


def test_round_trip_through_dict():
    config = load_config(DEFAULT, ['data.name=moons', 'seed=3'])
    assert config_from_dict(config_to_dict(config)) == config


def test_overrides_are_yaml():
    tree = parse_overrides(['data.weights=[0.3,0.7]', 'trainer.max_steps=10', 'run_dir=x/y', 'optim.grad_clip=null'])
    assert tree == {'data': {'weights': [0.3, 0.7]}, 'trainer': {'max_steps': 10}, 'run_dir': 'x/y',
                    'optim': {'grad_clip': None}}


def test_gmm_config_from_overrides():
    config = load_config('configs/toy/gmm.yaml', ['data.weights=[0.3,0.7]', 'data.means=[[0,0],[1,1]]',
                                                 'data.stds=[0.1,0.2]'])
    assert config.data.weights == [0.3, 0.7] and config.data.stds == [0.1, 0.2]


@pytest.mark.parametrize('override, message', [
    ('trainer.max_stepz=5', "trainer.max_stepz: unknown key (did you mean 'trainer.max_steps'?)"),
    ('bogus=1', 'bogus: unknown key'),
    ('optim.lr=-0.1', 'optim.lr: must be a finite number > 0'),
    ('optim.lr=abc', 'optim.lr: must be a number'),
    ('trainer.max_steps=1.5', 'trainer.max_steps: must be an integer'),
    ('noise.sigma_min=100', 'noise.sigma_min: must be < noise.sigma_max'),
    ('network.name=resnet', 'network.name: must be one of mlp'),
    ('precond.name=edn', "precond.name: must be one of edm, vp, ve (got 'edn') (did you mean 'edm'?)"),
    ('data.name=gmm', "data: name 'gmm' needs data.weights"),
    ('data.weights=[1]', "data: weights/means/stds/covs apply to name 'gmm' only"),
    ('trainer.precision=8', "trainer.precision: must be one of 32, bf16-mixed, 16-mixed"),
    ('trainer=3', 'trainer: must be a mapping'),
    ('ema.beta=1.0', 'ema.beta: must be in (0, 1)'),
    ('trainer.progress_bar=yes please', 'trainer.progress_bar: must be true or false'),
    ('noprefix', "override 'noprefix': expected key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, [override])
    assert message in str(info.value)
    assert '\n' not in str(info.value)


def test_gmm_shapes_checked():
    base = ['data.name=gmm', 'data.weights=[0.5,0.5]']
    with pytest.raises(ConfigError, match='data.means: must be 2 points'):
        load_config(DEFAULT, base + ['data.means=[[0,0]]', 'data.stds=[0.1,0.1]'])
    with pytest.raises(ConfigError, match='exactly one of data.stds'):
        load_config(DEFAULT, base + ['data.means=[[0,0],[1,1]]'])
    with pytest.raises(ConfigError, match='data.covs: must be 2 matrices'):
        load_config(DEFAULT, base + ['data.means=[[0,0],[1,1]]', 'data.covs=[[[1,0],[0,1]]]'])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match='nope.yaml: config file not found'):
        load_config(tmp_path / 'nope.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('data: [unclosed\n')
    with pytest.raises(ConfigError, match='bad.yaml: not valid YAML'):
        load_config(bad)
    listing = tmp_path / 'list.yaml'
    listing.write_text('- 1\n- 2\n')
    with pytest.raises(ConfigError, match='must hold a mapping'):
        load_config(listing)


def test_every_shipped_config_validates():
    from pathlib import Path
    for path in sorted(Path('configs').rglob('*.yaml')):
        config = load_config(path)
        assert dataclasses.is_dataclass(config), path
