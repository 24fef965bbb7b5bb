"""Grid runs as a SLURM job array through submitit (``--executor slurm``; needs scnn-bench[slurm]).

One array per wave (the float models first, then the rest), one array task per run. Logs go to
``<out>/slurm_logs/<job id>/`` and ``<out>/slurm_logs/runs.tsv`` says which job ran which run. When SLURM
preempts a task or its time limit comes, submitit calls ``checkpoint`` and requeues the same call, which
resumes from the run's own last epoch checkpoint.
"""
from __future__ import annotations

import logging
import shutil

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from benchmarks.harness.executors import ClusterOptions, NotVisible, OutputNotVisible, RunTask, finished
from benchmarks.harness.runner import RunSpec, record_failure
from methods import ConfigError

log = logging.getLogger(__name__)


class SlurmRunTask(RunTask):
    def checkpoint(self, spec: RunSpec) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run unchanged: ``execute`` finds its ``checkpoint.pt`` and resumes after the last
        finished epoch, so nothing has to be saved here."""
        return submitit.helpers.DelayedSubmission(self, spec)


def run(opts: ClusterOptions, waves: list[list[RunSpec]], task: RunTask) -> dict[str, dict]:
    """Submit each wave as one job array and wait for it before submitting the next."""
    if opts.slurm_cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError("--executor slurm found no SLURM here (sbatch, srun); run it on a SLURM login node "
                          "(or try the job array on this machine with --slurm-cluster local)")
    executor = submitit.AutoExecutor(folder=task.out / "slurm_logs" / "%j", cluster=opts.slurm_cluster)
    executor.update_parameters(
        name="scnn-bench", timeout_min=opts.slurm_time, cpus_per_task=int(opts.cpus_per_run),
        gpus_per_node=int(opts.gpus_per_run) or None, slurm_partition=opts.slurm_partition,
        slurm_array_parallelism=opts.slurm_max_parallel, slurm_additional_parameters=dict(opts.slurm_options) or None)
    worker = SlurmRunTask(task.out, task.data_dir, task.device, task.threads, task.token, task.executor)
    results: dict[str, dict] = {}
    for wave in waves:
        jobs = executor.map_array(worker, wave)
        with open(task.out / "slurm_logs" / "runs.tsv", "a") as f:
            f.writelines(f"{s.run_id}\t{j.job_id}\t{s.method}\t{dict(s.params)}\t{s.seed}\n"
                         for s, j in zip(wave, jobs))
        log.info("submitted %d runs as SLURM job array %s; logs in %s", len(jobs), jobs[0].job_id.split("_")[0],
                 task.out / "slurm_logs")
        try:
            for spec, job in zip(wave, jobs):
                results[spec.run_id] = _outcome(job, spec, task)
                log.info("run %s (%s) %s", spec.run_id, spec.method, results[spec.run_id].get("status"))
        except BaseException:  # interrupted, or a node without the output folder: cancel what is left
            for job in jobs:
                job.cancel(check=False)
            raise
    return results


def _outcome(job: submitit.Job, spec: RunSpec, task: RunTask) -> dict:
    try:
        result = job.result()
    except UncompletedJobError as e:  # FailedJobError too: an exception outside execute's own handling
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = lines[-1] if isinstance(e, FailedJobError) else lines[0]
        hint = "" if job.paths.stdout.exists() else "; it wrote no log: do the compute nodes share --out?"
        return finished(spec, task.out) or record_failure(
            spec, task.out, f"its SLURM job {job.job_id} failed ({reason}); log: "
                            f"{job.paths.stdout}{hint}")
    if isinstance(result, NotVisible):
        raise OutputNotVisible(task.out, result.node)
    return result
