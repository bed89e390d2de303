"""benchmarks/image_sampling.py: NFE bookkeeping, the paired marks of its tables, the verdict of several
metrics, and a tiny run end to end (rows cached and resumed, both profiles, every solver, grids)."""

import json
import sys

import pytest

from benchmarks import image_sampling
from evaluation import digit_features, fidelity


def test_nfe_to_steps():
    assert image_sampling.steps_for('heun', 35) == (18, 35)
    assert image_sampling.steps_for('heun', 16) == (8, 15)
    assert image_sampling.steps_for('euler', 6) == (6, 6)
    assert image_sampling.steps_for('dpmpp_2m', 1) == (2, 2)


def rows(values):
    """Rows for one (solver, NFE) point: {schedule: [value of checkpoint 0, 1, 2]}, two draws each
    (value ± 0.1, so the draw mean is the value)."""
    out = []
    for schedule, per_ckpt in values.items():
        for ckpt, value in enumerate(per_ckpt):
            for draw, offset in enumerate((-0.1, 0.1)):
                out.append({'ckpt': f'c{ckpt}', 'profile': 'none' if schedule == 'karras' else 'online',
                            'solver': 'euler', 'nfe': 8, 'schedule': schedule, 'draw': draw, 'num': 100,
                            'fd': value + offset, 'kid': value + offset, 'floor': {'fd': 1.0, 'kid': 0.0}})
    return out


def test_marks_need_the_whole_paired_interval_beyond_zero():
    table = image_sampling.summary(rows({'karras': [10, 20, 30], 'loglinear': [8, 17.5, 28.1],
                                         'entropic': [12.5, 21.5, 32.5], 'rescaled-entropic': [9, 21, 29.5]}), 'online')
    line = next(line for line in table.splitlines() if line.startswith('| 8 |'))
    cells = dict(zip(['karras', 'loglinear', 'entropic', 'rescaled-entropic'], line.strip('| ').split(' | ')[1:]))
    assert cells['loglinear'].startswith('**') and cells['entropic'].startswith('_')  # consistent across models
    assert not cells['rescaled-entropic'].startswith(('**', '_'))  # −1, +1, −0.5: mean below 0, interval across it
    assert cells['karras'].startswith('20 [')  # mean over checkpoints, then its interval
    # Offline rows are not mixed into the online table (karras, which reads no profile, serves both).
    offline = [dict(r, profile='offline', fd=100.0, kid=100.0) for r in rows({'loglinear': [1, 1, 1]})]
    assert image_sampling.summary(rows({'karras': [10, 20, 30], 'loglinear': [8, 17.5, 28.1]}) + offline,
                                  'online') == image_sampling.summary(rows({'karras': [10, 20, 30],
                                                                           'loglinear': [8, 17.5, 28.1]}), 'online')


def test_a_schedule_is_better_only_where_every_metric_agrees():
    karras, shifted = [10, 20, 30], [8, 17.5, 28.1]  # lower for every checkpoint
    table = rows({'karras': karras, 'rescaled-entropic': shifted, 'surrogate': shifted})
    for r in table:  # the autoencoder and the pixel checks: lower for rescaled-entropic, higher for surrogate
        sign = {'karras': 0, 'rescaled-entropic': -1, 'surrogate': 1}[r['schedule']]
        base = 5 + int(r['ckpt'][1:])
        r.update({m: base + sign + 0.01 * r['draw'] for m in ('ae_fd', 'ae_kid', 'background', 'spectrum')})
        r['floor'] = {m: 1.0 for m in image_sampling.METRICS}
    text = image_sampling.summary(table, 'online')
    verdicts = {line.split(' | ')[2]: line.split(' | ')[-2] for line in text.splitlines()
                if line.startswith('| euler | 8 |') and 'grids/' in line}
    assert verdicts == {'rescaled-entropic': 'better', 'surrogate': 'disputed'}  # classifier lower, the rest higher
    assert '[surrogate](grids/euler-8-surrogate.png) [karras](grids/euler-8-karras.png)' in text
    assert '| euler | 8 | better (6 better, 0 worse) | disputed (2 better, 4 worse) |' in text  # the verdict matrix


def test_a_checkpoint_counts_at_a_point_only_with_all_its_draws():
    table = rows({'karras': [10, 20, 30], 'loglinear': [8, 17.5, 28.1]})
    half_drawn = [r for r in table if not (r['schedule'] == 'loglinear' and r['ckpt'] == 'c2' and r['draw'] == 1)]
    cells = image_sampling.cells(half_drawn, 'online', 'fd')
    assert sorted(cells[('euler', 8, 'loglinear')]) == ['c0', 'c1'] and len(cells[('euler', 8, 'karras')]) == 3
    assert cells[('euler', 8, 'loglinear')]['c1'] == pytest.approx(17.5)
    only_first_draws = [r for r in table if not (r['schedule'] == 'loglinear' and r['draw'] == 1)]
    assert ('euler', 8, 'loglinear') not in image_sampling.cells(only_first_draws, 'online', 'fd')


def test_which_schedule_compares_the_best_of_each_family_per_model():
    """#35's table: the best hand-made ρ and the best free and optimised schedules are picked per point by
    mean FD; their ratio is taken model by model, not of the means (here 3.83, not 40/13.3 = 3.0)."""
    a, b, c = 'm0', 'm1', 'm2'
    fd = {('euler', 6, 'karras'): {a: 20, b: 22, c: 24}, ('euler', 6, 'karras-rho3'): {a: 30, b: 30, c: 30},
          ('euler', 6, 'loglinear'): {a: 19, b: 25, c: 24},  # mean 22.67 > karras's 22: karras is the best ρ
          ('euler', 6, 'rescaled-entropic'): {a: 10, b: 20, c: 90}, ('euler', 6, 'surrogate'): {a: 50, b: 50, c: 50},
          ('euler', 6, 'optimized'): {a: 20, b: 10, c: 10},  # mean 13.3; free / optimised per model 0.5, 2, 9
          ('euler', 6, 'optimized-entropic'): {a: 11, b: 21, c: 91}}
    tables = {'fd': fd, 'kid': fd}
    lines = image_sampling.which_schedule(tables, 1.27)
    row = next(line for line in lines if line.startswith('| euler | 6 |'))
    cells = [cell.strip() for cell in row.split('|')[1:-1]]
    assert cells[3] == '22 (karras)'
    assert cells[8].startswith('3.83 [') and '(rescaled-entropic / optimized)' in cells[8]  # (0.5 + 2 + 9)/3
    assert cells[10] == 'no'
    assert 'heun 119,936' in lines[-2] and 'euler 20,096' in lines[-2]


def test_offline_profiles_are_compared_with_online_per_model():
    online = rows({'karras': [10, 20, 30], 'surrogate': [10, 20, 30]})
    offline = [dict(r, profile='offline') for r in rows({'surrogate': [12, 18, 30]})]
    for r in online + offline:  # the re-measured profile doubles the second σ; σ_max, σ_min and 0 stay
        r['sigmas'] = [80.0, 20.0 if r['profile'] == 'offline' else 10.0, 1.0, 0.002, 0.0]
    text = image_sampling.summary(online + offline, 'offline')
    assert image_sampling.profile_comparison(online) == []
    assert 'Offline against' not in image_sampling.summary(online, 'online')
    line = next(line for line in text.splitlines() if line.startswith('| euler | 8 | surrogate |'))
    # Interior steps moved ln 2 and 0: median ln 2 / 2, i.e. σ × 1.41; FD ratios 1.2, 0.9, 1.0 per model
    # (mean 1.03; the ratio of the mean FDs would be 1.00). karras reads no profile and is not listed.
    assert line.strip(' |').split(' | ')[3:5] == ['41%', '1.03 [0.65, 1.41]']
    assert '| euler | 8 | karras |' not in text and 'from 0.90 to 1.20' in text
    assert 'noise draws at these points (median, both profiles): 1%' in text  # ±0.1 around 10–30


def test_rows_of_another_classifier_or_a_retrained_model_are_refused():
    table = rows({'karras': [10, 20, 30], 'loglinear': [8, 17.5, 28.1]})
    for r in table:
        r.update(classifier='a', model=f'weights of {r["ckpt"]}')
    assert '| 8 |' in image_sampling.summary(table, 'online')
    table[-1]['model'] = 'retrained'  # another model saved under the same checkpoint path
    with pytest.raises(SystemExit, match=f"{table[-1]['ckpt']}: rows of different model weights"):
        image_sampling.summary(table, 'online')
    table[-1]['model'], table[0]['classifier'] = f'weights of {table[-1]["ckpt"]}', 'b'
    with pytest.raises(SystemExit, match=r'rows scored by different classifiers \(a, b\)'):
        image_sampling.summary(table, 'online')


@pytest.mark.slow
def test_a_tiny_run_is_cached_resumed_and_summarised(tiny_mnist_ckpt, tmp_path, monkeypatch, capsys):
    classifier, autoencoder = tmp_path / 'classifier.pt', tmp_path / 'autoencoder.pt'
    monkeypatch.setattr(image_sampling, 'cached_classifier',
                        lambda data, cache: (classifier, fidelity.train_classifier(data, classifier, steps=30)))
    monkeypatch.setattr(image_sampling, 'cached_autoencoder',
                        lambda data, cache: (autoencoder, digit_features.train_autoencoder(data, autoencoder, steps=5)))
    monkeypatch.setattr(image_sampling, 'OFFLINE_POINTS', 8)
    monkeypatch.setattr(image_sampling, 'OFFLINE_SAMPLES', 8)
    out = tmp_path / 'bench'
    argv = ['image_sampling', '--ckpt', tiny_mnist_ckpt, '--num', '24', '--draws', '2', '--nfe', '3',
            '--schedules', 'karras', 'rescaled-entropic', 'surrogate', '--out', str(out)]
    monkeypatch.setattr(sys, 'argv', argv)
    image_sampling.main()
    lines = (out / 'rows.jsonl').read_text().splitlines()
    assert len(lines) == 4 * 3 * 2  # solvers × schedules × draws
    row = json.loads(lines[0])
    assert row['fd'] > 0 and row['num'] == 24 and row['sigmas'][-1] == 0 and row['floor']['fd'] >= 0
    assert set(image_sampling.METRICS) <= set(row) and set(row['floor']) == set(image_sampling.METRICS)
    assert (out / 'grids' / 'heun-3-rescaled-entropic.png').is_file() and len(list((out / 'grids').iterdir())) == 12
    heun = [json.loads(line) for line in lines if json.loads(line)['solver'] == 'heun']
    assert {r['nfe'] for r in heun} == {3} and {r['steps'] for r in heun} == {2}
    # The same call again computes nothing; the offline profile adds only the schedules that read a profile.
    image_sampling.main()
    assert len((out / 'rows.jsonl').read_text().splitlines()) == len(lines)
    monkeypatch.setattr(sys, 'argv', argv + ['--profile', 'offline'])
    image_sampling.main()
    new = [json.loads(line) for line in (out / 'rows.jsonl').read_text().splitlines()[len(lines):]]
    assert len(new) == 4 * 2 * 2 and {r['profile'] for r in new} == {'offline'}
    assert (out / 'results-online.md').is_file() and (out / 'nfe-offline.png').is_file()
    assert '### heun: classifier FD' in (out / 'results-offline.md').read_text()
    # A classifier trained again with other weights (as on another machine) scores no row into this folder.
    monkeypatch.setattr(image_sampling, 'cached_classifier',
                        lambda data, folder: (classifier, fidelity.train_classifier(data, classifier, steps=31)))
    monkeypatch.setattr(sys, 'argv', argv + ['--nfe', '4'])
    with pytest.raises(SystemExit, match='rows scored by different classifiers'):
        image_sampling.main()
    assert len((out / 'rows.jsonl').read_text().splitlines()) == len(lines) + len(new)


def test_schedule_diagnosis_reports_every_schedule(tiny_mnist_ckpt, monkeypatch, capsys):
    from benchmarks import schedule_diagnosis
    monkeypatch.setattr(sys, 'argv', ['schedule_diagnosis', '--ckpt', tiny_mnist_ckpt, '--steps', '4', '--num', '3'])
    schedule_diagnosis.main()
    out = capsys.readouterr().out
    for name in schedule_diagnosis.SCHEDULES:
        assert f'\n{name}: σ = 80, ' in out
    corrections = [line for line in out.splitlines() if line.startswith('  heun correction / step: ')]
    assert len(corrections) == len(schedule_diagnosis.SCHEDULES)
    assert all(line.endswith(', 0.00') and line.count(',') == 3 for line in corrections)  # none on the last step
