"""train.py with one more callback: at the end every rank saves what must agree across ranks (the
weights, the EMA, the entropy profile) and what must not (its random streams), as rank<R>.pt in
the folder named by CEDM_PROBE_DIR. Run by tests/test_distributed.py under torchrun."""

import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402


class Probe(L.Callback):
    def on_train_end(self, trainer, module):
        profile = {k: v for k, v in module.profile.state_dict().items() if not k.startswith('pending')}
        torch.save({'weights': module.denoiser.state_dict(), 'ema': module.ema.state_dict(), 'profile': profile,
                    'data': module.data_generator.get_state(), 'sigma': module.sigma_generator.get_state()},
                   Path(os.environ['CEDM_PROBE_DIR']) / f'rank{trainer.global_rank}.pt')


build = train.build_trainer
train.build_trainer = lambda config, run_dir: (lambda trainer: trainer.callbacks.append(Probe()) or trainer)(build(config, run_dir))

if __name__ == '__main__':
    train.main()
