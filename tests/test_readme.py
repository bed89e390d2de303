"""README.md held to the code: its Python blocks run, its commands name real scripts, flags and config
keys, it stays under 20,000 bytes (detail goes to docs/*.md, whose links and commands are checked alike),
and its links stay inside the repository and resolve.

The checks are plain functions of the README's text (`python_block_problems`, `command_problems`,
`link_problems`, `size_problems`), each returning a list of one-line problems, so that the tests at the
end can show each of them failing on a deliberately broken copy without touching the real file.
benchmarks/README.md gets the command and link checks too, and docs/config-help.txt (every config key
with its type and default, linked from the README) must equal what `config_help()` makes of config.py.
"""

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
BENCHMARKS_README = ROOT / 'benchmarks' / 'README.md'
MAX_BYTES = 20_000
DEFAULT_CONFIG = 'configs/toy/default.yaml'  # train.py's built-in default
SHELL_LANGUAGES = ('bash', 'sh', 'shell', '')
# The README's first two commands (issue #19): the main job and the tests, character for character.
SETUP_COMMANDS = (
    'pip install -r requirements.txt && python train.py run_dir=runs/quickstart && python sample.py --ckpt '
    'runs/quickstart/checkpoints/last.ckpt --trajectories && python metrics.py --ckpt runs/quickstart/checkpoints/last.ckpt\n'
    'pip install -r requirements-test.txt && python -m pytest -q\n')


# ------------------------------------------------------------------------------------------------
# Reading the Markdown.

FENCE = re.compile(r'^(\s*)```\s*([\w+-]*)\s*$')


def code_blocks(text):
    """[(language, code)] of every fenced block (indented ones in list items included), in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language, body = len(opening.group(1)), opening.group(2).lower(), []
        i += 1
        while i < len(lines) and lines[i].strip() != '```':
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].lstrip())
            i += 1
        blocks.append((language, '\n'.join(body) + '\n'))
        i += 1
    return blocks


def prose(text):
    """The text outside fenced blocks, inline code spans blanked."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line) or (inside and line.strip() == '```'):
            inside = not inside
            continue
        if not inside:
            kept.append(re.sub(r'`[^`]*`', '``', line))
    return '\n'.join(kept)


def heading_anchors(text):
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces as hyphens, -1, -2 for repeats."""
    anchors, seen = set(), {}
    for line in prose(text).splitlines():
        match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not match:
            continue
        slug = re.sub(r'[^\w\- ]', '', match.group(1).strip().lower()).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f'{slug}-{count}')
    return anchors


# ------------------------------------------------------------------------------------------------
# (a) Python blocks.

CHECKPOINT_LITERAL = re.compile(r"""(['"])([^'"\s]*\.ckpt)\1""")


def python_block_problems(text, checkpoint=None):
    """Run every ```python block from the repository root, each in fresh globals; a quoted '....ckpt'
    path is replaced by `checkpoint` (a real one) when given. One problem per block that raises."""
    problems = []
    blocks = [code for language, code in code_blocks(text) if language in ('python', 'py')]
    for number, code in enumerate(blocks, 1):
        if checkpoint is not None:
            code = CHECKPOINT_LITERAL.sub(lambda m: repr(str(checkpoint)), code)
        try:
            exec(compile(code, f'<README python block {number}>', 'exec'), {'__name__': '__readme__'})
        except Exception as e:  # noqa: BLE001 - any failure of a documented snippet is the finding
            problems.append(f'python block {number}: {type(e).__name__}: {e}')
    return problems


# ------------------------------------------------------------------------------------------------
# (b) Shell commands.

SEPARATORS = {'&&', '||', ';', '|', '&'}
PREFIXES = {'srun', 'time', 'nohup', 'env', 'sudo'}


def shell_commands(code):
    """Each simple command of a shell block as a token list: continuation lines joined, comments and
    a leading '$ ' prompt dropped, split at && || ; | &."""
    commands = []
    for line in re.sub(r'\\\n', ' ', code).splitlines():
        line = line.strip()
        if line.startswith('$ '):
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, '#'
        try:
            tokens = list(lexer)
        except ValueError as e:  # an unbalanced quote
            commands.append(['<unparsable>', line, str(e)])
            continue
        current = []
        for token in tokens + [';']:
            if token in SEPARATORS:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def invocation(tokens):
    """(target, arguments) of `python X.py ...`, `python -m benchmarks.X ...` or `torchrun ... X.py ...`
    (also after srun, time, VAR=value); target is 'X.py' or 'benchmarks.X'. None for other commands."""
    i = 0
    while i < len(tokens) and (tokens[i] in PREFIXES or re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', tokens[i])):
        i += 1
    if i == len(tokens):
        return None
    program, rest = Path(tokens[i]).name, tokens[i + 1:]
    if re.fullmatch(r'python(3(\.\d+)?)?', program):
        if rest and rest[0].endswith('.py'):
            return rest[0], rest[1:]
        if len(rest) > 1 and rest[0] == '-m' and rest[1].split('.')[0] == 'benchmarks':
            return rest[1], rest[2:]
        return None
    if program == 'torchrun':
        for j, token in enumerate(rest):
            if token.endswith('.py'):
                return token, rest[j + 1:]
        return 'torchrun without a script', []
    return None


def script_file(target):
    return ROOT / target if target.endswith('.py') else ROOT / (target.replace('.', '/') + '.py')


@functools.lru_cache(maxsize=None)
def help_text(target):
    """The --help output of a script or benchmark module, run from the repository root (once each)."""
    command = [sys.executable, target] if target.endswith('.py') else [sys.executable, '-m', target]
    result = subprocess.run(command + ['--help'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return result.stdout if result.returncode == 0 else None


def flag_value(arguments, flag):
    """The value of `flag` (`--flag VALUE` or `--flag=VALUE`), or None."""
    for i, argument in enumerate(arguments):
        if argument == flag and i + 1 < len(arguments):
            return arguments[i + 1]
        if argument.startswith(flag + '='):
            return argument[len(flag) + 1:]
    return None


def config_problem(arguments):
    """The one-line ConfigError of train.py's `--config FILE` and `key=value` overrides, or None."""
    from config import ConfigError, config_from_dict, merge, parse_overrides, read_config_file

    overrides = [a for a in arguments if '=' in a and not a.startswith('-')]
    try:
        config_from_dict(merge(read_config_file(flag_value(arguments, '--config') or DEFAULT_CONFIG),
                               parse_overrides(overrides)))
    except ConfigError as e:
        return str(e)
    return None


def command_problems(text, checked=None):
    """Every `python SCRIPT.py`, `python -m benchmarks.X` and `torchrun ... SCRIPT.py` command of the
    shell blocks (```bash, ```sh, plain ```): the script exists and answers --help, every flag it is
    given appears in that help, a --config file exists, and train.py's overrides make a valid config.
    `checked`, a list, collects the commands looked at."""
    problems = []
    for language, code in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        for tokens in shell_commands(code):
            found = invocation(tokens)
            if found is None:
                continue
            target, arguments = found
            shown = ' '.join(tokens)
            if checked is not None:
                checked.append(shown)
            if not script_file(target).is_file():
                problems.append(f'{shown}: no script {target}')
                continue
            help_output = help_text(target)
            if help_output is None:
                problems.append(f'{shown}: {target} --help fails')
                continue
            for argument in arguments:
                if re.match(r'^--?[A-Za-z]', argument):
                    flag = argument.split('=', 1)[0]
                    if not re.search(r'(?<![\w-])' + re.escape(flag) + r'(?![\w-])', help_output):
                        problems.append(f'{shown}: {target} has no flag {flag}')
            config = flag_value(arguments, '--config')
            if config is not None and not (ROOT / config).is_file():
                problems.append(f'{shown}: --config {config}: no such file')
            elif target == 'train.py':
                problem = config_problem(arguments)
                if problem:
                    problems.append(f'{shown}: {problem}')
    return problems


# ------------------------------------------------------------------------------------------------
# (c) size and (d) links.

LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HTML_LINK = re.compile(r'\b(?:src|href)\s*=\s*["\']([^"\']+)["\']', re.IGNORECASE)


def size_problems(text, limit=MAX_BYTES):
    size = len(text.encode())
    return [f'{size} bytes, over the limit of {limit}'] if size > limit else []


def link_problems(text, folder=ROOT):
    """Links (Markdown and HTML, outside code) of a Markdown file in `folder`: none to a URL or outside
    the repository, every relative target present, every #anchor a heading of its file."""
    problems = []
    for target in LINK.findall(prose(text)) + HTML_LINK.findall(prose(text)):
        if re.match(r'^[A-Za-z][A-Za-z0-9+.-]*:', target) or target.startswith('//'):
            problems.append(f'{target}: points outside the repository')
            continue
        path, _, anchor = target.partition('#')
        if not path:
            if anchor not in heading_anchors(text):
                problems.append(f'{target}: no such heading')
            continue
        resolved = (folder / path).resolve()
        if not resolved.is_relative_to(ROOT):
            problems.append(f'{target}: points outside the repository')
        elif not resolved.exists():
            problems.append(f'{target}: no such file or folder')
        elif anchor and resolved.suffix == '.md' and anchor not in heading_anchors(resolved.read_text()):
            problems.append(f'{target}: no such heading in {path}')
    return problems


# ------------------------------------------------------------------------------------------------
# docs/config-help.txt: every config key with its type and default, generated from config.py.

CONFIG_HELP = ROOT / 'docs' / 'config-help.txt'


def _type_name(tp):
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return f'{_type_name(next(a for a in typing.get_args(tp) if a is not type(None)))} or null'
    if origin is typing.Literal:
        return 'one of ' + ', '.join(str(a) for a in typing.get_args(tp))
    if origin is list:
        return f'list of {_type_name(typing.get_args(tp)[0])}'
    return tp.__name__


def _yaml_value(value):
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and re.fullmatch(r'[\d.eE+-]+', value):
        return repr(value)  # '32': a string, though it reads as a number
    return str(value)


def config_help():
    """The text of docs/config-help.txt. Regenerate the file after changing config.py with
    python -c "from tests.test_readme import config_help; print(config_help(), end='')" > docs/config-help.txt"""
    import dataclasses
    import typing

    from config import Config

    def keys(cls, prefix=''):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f'{prefix}{f.name}.')
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                yield f'{prefix}{f.name}', _yaml_value(default), _type_name(hints[f.name])

    rows = list(keys(Config))
    width = max(len(f'{key}: {default}') for key, default, _ in rows) + 2
    lines = ["# train.py's config keys: default and type (config.py, where comments explain them).",
             '# Set any of them as key=value: python train.py data.name=moons trainer.max_steps=2000',
             '# Generated by config_help() in tests/test_readme.py, which checks that this file is current.']
    lines += [f'{key}: {default}'.ljust(width) + f'# {kind}' for key, default, kind in rows]
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------
# The tests.

def readme_text():
    return README.read_text()


def test_readme_size():
    assert size_problems(readme_text()) == []


def test_readme_starts_with_the_setup_commands():
    text = readme_text()
    language, code = code_blocks(text)[0]
    assert (language, code) == ('bash', SETUP_COMMANDS)
    assert text.index('```') < text.index('\n## ')  # before the first section


def test_config_help_file_is_current():
    assert CONFIG_HELP.read_text() == config_help()


def test_readme_links_stay_in_the_repository():
    text = readme_text()
    assert '../' not in text
    assert link_problems(text) == []


def test_benchmarks_readme_links():
    assert link_problems(BENCHMARKS_README.read_text(), BENCHMARKS_README.parent) == []


@pytest.mark.parametrize('name', sorted(path.name for path in (ROOT / 'docs').glob('*.md')))
def test_docs_links_and_commands(name):
    """The pages the README hands its detail to (docs/*.md) are held to the same checks."""
    text = (ROOT / 'docs' / name).read_text()
    assert link_problems(text, ROOT / 'docs') == []
    assert command_problems(text) == []


def test_readme_commands_use_real_scripts_flags_and_keys():
    checked = []
    assert command_problems(readme_text(), checked) == []
    scripts = {invocation(shell_commands(command)[0])[0] for command in checked}
    assert {'train.py', 'sample.py', 'metrics.py', 'fid.py', 'plot_profile.py'} <= scripts


@pytest.mark.slow
def test_benchmarks_readme_commands():
    """Slow: the benchmark modules' --help imports Lightning in some of them."""
    checked = []
    assert command_problems(BENCHMARKS_README.read_text(), checked) == []
    assert len(checked) >= 5


@pytest.mark.slow
def test_readme_python_blocks_run(tiny_run):
    """Slow: needs the shared tiny training run's checkpoint."""
    text = readme_text()
    assert any(language == 'python' and CHECKPOINT_LITERAL.search(code) for language, code in code_blocks(text))
    assert python_block_problems(text, checkpoint=tiny_run / 'checkpoints' / 'last.ckpt') == []


# Each check on a deliberately broken copy of the README's text (the real file is not touched).

def broken(old, new):
    """The README's text with its first `old` replaced by `new` (which must be there to replace)."""
    text = readme_text()
    assert old in text, old
    return text.replace(old, new, 1)


def test_python_check_catches_a_broken_block():
    problems = python_block_problems(broken('from sampling_model import load_model',
                                            'from sampling_model import load_modle'))
    assert len(problems) == 1 and 'load_modle' in problems[0]


@pytest.mark.parametrize('old, new, expected', [
    ('--trajectories', '--trajectorys', 'has no flag --trajectorys'),
    ('python sample.py --network', 'python sample.py --netwrk', 'has no flag --netwrk'),
    ('trainer.max_steps=2000', 'trainer.max_stepz=2000', "unknown key (did you mean 'trainer.max_steps'?)"),
    ('noise.density=structure', 'noise.density=structur', "noise.density: must be one of"),
    ('--config configs/toy/tree.yaml', '--config configs/toy/trees.yaml', 'configs/toy/trees.yaml: no such file'),
    ('python plot_profile.py', 'python plot_profiles.py', 'no script plot_profiles.py'),
    ('torchrun --standalone --nproc_per_node=8 sample.py', 'torchrun --standalone --nproc_per_node=8 samples.py',
     'no script samples.py'),
])
def test_command_check_catches(old, new, expected):
    problems = command_problems(broken(old, new))
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize('old, new, expected', [
    ('(docs/entropic_time.md)', '(../shared/notes/entropy.md)', 'outside the repository'),
    ('(docs/entropic_time.md)', '(https://arxiv.org/abs/2504.13612)', 'outside the repository'),
    ('(benchmarks/README.md)', '(benchmarks/READ.md)', 'no such file'),
    ('(#entropic-time)', '(#entropic-times)', 'no such heading'),
])
def test_link_check_catches(old, new, expected):
    problems = link_problems(broken(old, new))
    assert len(problems) == 1 and expected in problems[0], problems


def test_size_check_catches_a_long_readme():
    assert size_problems(readme_text() + 'x' * MAX_BYTES)
