"""SLURM: which job this is, and putting it back in the queue before its time limit or a preemption.

`#SBATCH --signal=USR1@120` (or the submitit launcher) sends SIGUSR1 two minutes before the limit; the
loop then saves last.pt and calls `requeue`. The requeued job starts again with the same command and the
same SLURM_JOB_ID, and continues its run directory from last.pt. Note that SLURM ends the running job
(SIGTERM, then SIGKILL after KillWait) as soon as it is requeued: call `requeue` only once last.pt is saved.

No torch here.
"""

from __future__ import annotations

import os
import shutil
import subprocess

REQUEUE_TIMEOUT_S = 30


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for a job array's task, else SLURM_JOB_ID;
    None outside a SLURM job."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def restart_count() -> int:
    """How many times SLURM has started this job again (SLURM_RESTART_COUNT; 0 for its first start)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0


def requeue(log) -> bool:
    """`scontrol requeue <job id>` for this SLURM job; logs one line saying what happened, returns success.
    Outside SLURM it does nothing and returns False."""
    job = slurm_job_id()
    if job is None:
        log.info("Not requeued: this run is not a SLURM job (no SLURM_JOB_ID)")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.warning("SLURM job %s not requeued: scontrol is not on PATH", job)
        return False
    try:
        done = subprocess.run(
            [scontrol, "requeue", job],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=REQUEUE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning(
            "SLURM job %s not requeued: scontrol requeue gave no answer in %d s", job, REQUEUE_TIMEOUT_S
        )
        return False
    except OSError as err:
        log.warning("SLURM job %s not requeued: %s could not run (%s)", job, scontrol, err)
        return False
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        log.warning(
            "SLURM job %s not requeued: scontrol requeue failed with exit code %d%s",
            job,
            done.returncode,
            f" ({said[0][:200]})" if said else "",
        )
        return False
    log.info("SLURM job %s requeued: it will start again and continue this run from checkpoints/last.pt", job)
    return True
