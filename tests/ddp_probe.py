"""train.py with one more callback: at the end every rank saves what must agree across ranks (the
weights, the EMA, the entropy profile and its spectrum, the count of skipped steps) and what must not (its
random streams, a dropout mask drawn from its global stream, whether it holds the post-hoc EMA, how many
times it computed the data's spectrum), as rank<R>.pt in the folder named by CEDM_PROBE_DIR. With CEDM_PROBE_INF_LOSS=R:B,B,...
rank R's loss is infinite in its batches B (counted from 0) while every gradient stays finite: an
overflow that one rank alone sees. Run by tests/test_distributed.py under torchrun."""

import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from training import module as module_lib  # noqa: E402


class Probe(L.Callback):
    def on_train_end(self, trainer, module):
        profile = {k: v for k, v in module.profile.state_dict().items() if not k.startswith('pending')}
        torch.save({'weights': module.denoiser.state_dict(), 'ema': module.ema.state_dict(), 'profile': profile,
                    'data': module.data_generator.get_state(), 'sigma': module.sigma_generator.get_state(),
                    'nonfinite_steps': module.nonfinite_steps, 'global_step': trainer.global_step,
                    'dropout': torch.nn.functional.dropout(torch.ones(64), 0.5), 'spectrum': module.profile.spectrum,
                    'posthoc': module.posthoc_ema is not None, 'spectrum_calls': spectrum_calls[0]},
                   Path(os.environ['CEDM_PROBE_DIR']) / f'rank{trainer.global_rank}.pt')


def infinite_loss_on_one_rank(rank, batches):
    real, calls = module_lib.edm_loss, [0]

    def edm_loss(denoiser, x0, sigma, **kwargs):
        per_sample, sq_err = real(denoiser, x0, sigma, **kwargs)
        if calls[0] in batches and int(os.environ['RANK']) == rank:
            per_sample = per_sample + torch.zeros_like(per_sample).index_fill(0, torch.tensor([0]), torch.inf)  # no gradient
        calls[0] += 1
        return per_sample, sq_err
    module_lib.edm_loss = edm_loss


def counting(function, calls):
    def counted(*args, **kwargs):
        calls[0] += 1
        return function(*args, **kwargs)
    return counted


spectrum_calls = [0]
module_lib.covariance_spectrum = counting(module_lib.covariance_spectrum, spectrum_calls)
build = train.build_trainer
train.build_trainer = lambda *args: (lambda trainer: trainer.callbacks.append(Probe()) or trainer)(build(*args))

if 'CEDM_PROBE_INF_LOSS' in os.environ:
    rank, batches = os.environ['CEDM_PROBE_INF_LOSS'].split(':')
    infinite_loss_on_one_rank(int(rank), {int(b) for b in batches.split(',')})

if __name__ == '__main__':
    train.main()
