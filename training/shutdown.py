"""Clean shutdown: on SIGTERM, SIGINT or SIGUSR1, finish the step and stop (last.ckpt is written as at
any end of a run); under SLURM, SIGUSR1 (the time-limit warning) also requeues the job."""

import os
import signal
import subprocess
import threading

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SYNC_EVERY = 10  # steps between the ranks' checks for a signal under DDP


class GracefulShutdown(L.Callback):
    """Stops training at the end of the current step when the process gets SIGTERM (`kill`, schedulers,
    SLURM pre-emption), SIGINT (Ctrl-C) or SIGUSR1 (SLURM's `--signal=USR1@SECONDS` warning before the
    time limit), through `trainer.should_stop`: the run then ends as a finished one does, and
    `checkpoint.Checkpoints` writes last.ckpt. `stopped_at` holds the step and `received` the signal.
    A second SIGINT interrupts at once; the last checkpoint stays whole (atomic writes).
    Under DDP a signal to any rank stops every rank at the same step (within SYNC_EVERY steps). Under SLURM, SIGUSR1 then
    requeues the job (`scontrol requeue`, from rank 0; `requeued` says whether it worked), so a
    job script that trains with `--resume auto` continues where it stopped."""

    def __init__(self):
        self.received = None
        self.stopped_at = None
        self.requeued = None

    def on_train_start(self, trainer, pl_module):
        # Installed here, after Lightning's own SIGTERM handler (set when fitting starts), which would
        # end the run without a checkpoint. Lightning puts the original handlers back at teardown.
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = signal.Signals(signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.received is not None
        if trainer.world_size > 1:
            # Ranks agree through a collective, every rank at the same steps: every SYNC_EVERY-th
            # step, since one per step costs as much as a toy model's step over gloo.
            if trainer.global_step % SYNC_EVERY:
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            self.received = self.received or signal.SIGTERM  # a rank that learnt of it from another
            trainer.should_stop = True
            self.stopped_at = trainer.global_step
            if self.received == signal.SIGUSR1 and 'SLURM_JOB_ID' in os.environ and trainer.is_global_zero:
                self.requeued = requeue_slurm_job()


def requeue_slurm_job():
    """Ask SLURM to requeue this job (array tasks included); True if scontrol accepted."""
    job = os.environ['SLURM_JOB_ID']
    if 'SLURM_ARRAY_JOB_ID' in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        return subprocess.run(['scontrol', 'requeue', job], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
