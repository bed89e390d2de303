"""Files that are whole whenever the process dies: written to a temporary file in the same folder,
synced, then renamed into place."""

import os
import shutil
from pathlib import Path

import torch


def write_atomically(path, write):
    """Call `write(temporary path)`, then rename the temporary file onto `path`: whenever the process
    dies, `path` is the previous complete file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_atomically(source, path):
    """Make `path` the file `source` (a hard link; a synced copy where links are not supported)."""
    def write(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            _fsync(tmp)
    write_atomically(path, write)


def _fsync(path):
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())


def save_atomically(obj, path):
    """`torch.save(obj)` to `path`, atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    write_atomically(path, write)
