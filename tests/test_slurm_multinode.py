"""Two SLURM nodes on this machine: ranks on different nodes, FSDP across them, requeue of a two-node job.

One slurmctld and two slurmd daemons (`slurmd -N eqcoh-node1`, `slurmd -N eqcoh-node2`, each with its own port,
spool folder and log, both at 127.0.0.1; tests/slurm_cluster.py) form the cluster; it is started once for this
module, and if it cannot start the tests fail with the reason. Every job asks for 2 nodes x 1 GPU, so SLURM places
one task on each node: rank 0 on eqcoh-node1, rank 1 on eqcoh-node2, and DINOv2's `dinov2.distributed` takes its
rendezvous from SLURM_JOB_NODELIST (master = eqcoh-node1, resolving to 127.0.0.1) exactly as on a real cluster.
The training is the tiny EqCoh config on two CPU ranks (gloo over the loopback interface, FSDP SHARD_GRAD_OP).
"""

from __future__ import annotations

import re

import pytest
from slurm_cluster import MULTI_NODES, SlurmCluster, require_root
from test_slurm import (
    STARTED,
    assert_two_rank_run,
    checkpointed,
    job_field,
    release,
    submit,
    wait_completed,
    wait_for,
)

NODE_1, NODE_2 = MULTI_NODES
NODELIST = "eqcoh-node[1-2]"  # how SLURM writes the two nodes (SLURM_JOB_NODELIST, scontrol's NodeList)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_root()  # skipped with the reason off root; as root, failing to start is an error
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=MULTI_NODES).start()
    yield slurm
    slurm.stop()


def assert_one_task_per_node(cluster: SlurmCluster, job: str) -> None:
    """Each slurmd launched exactly one task of the job's step 0 (its own log says so)."""
    assert job_field(cluster, job, "NodeList") == NODELIST
    for node in MULTI_NODES:
        log = (cluster.root / "log" / f"slurmd.{node}.log").read_text()
        launched = re.findall(rf"launch task StepId={job}\.0 request from", log)
        assert len(launched) >= 1, f"slurmd {node} launched no task of job {job}:\n{log[-3000:]}"


def submitit_ranks(output_dir, job: str) -> dict[int, tuple[int, int]]:
    """{global rank: (node index, number of nodes)} from submitit's JobEnvironment line in each task's log."""
    found = {}
    for rank in (0, 1):
        text = (output_dir / f"{job}_{rank}_log.out").read_text()
        m = re.search(r"node=(\d+)\((\d+)\), global_rank=(\d+)\(2\)", text)
        assert m, f"no JobEnvironment line in {job}_{rank}_log.out:\n{text[-2000:]}"
        found[int(m.group(3))] = (int(m.group(1)), int(m.group(2)))
    return found


@pytest.mark.slurm
@pytest.mark.slow
def test_plugin_launcher_trains_on_two_nodes(cluster, tmp_path):
    # GPUs asked for as JUWELS' profile does (--gres=gpu:1 per node instead of --gpus-per-node=1)
    launcher = "-m dinov2_eqcoh.run.train --cluster-profile local --nodes 2 --ngpus 1 --gpu-request gres"
    job, output_dir = submit(cluster, launcher, tmp_path)
    wait_completed(cluster, job, output_dir)

    assert "#SBATCH --gres=gpu:1" in (output_dir / f"{job}_submission.sh").read_text()
    assert "gpu:1" in job_field(cluster, job, "TresPerNode")
    assert_two_rank_run(output_dir)  # both shards, both ranks' logs, the teacher checkpoint
    for rank, node in enumerate(MULTI_NODES):  # the plugin's Trainer names SLURM's node of each task
        announced = (output_dir / f"{job}_{rank}_log.out").read_text()
        expected = f"slurm job {job}, rank {rank} of 2, output folder {output_dir}, node {node} ({rank + 1} of 2)"
        assert expected in announced, announced
    assert submitit_ranks(output_dir, job) == {0: (0, 2), 1: (1, 2)}
    assert_one_task_per_node(cluster, job)
    assert "sharding_strategy: SHARD_GRAD_OP" in (output_dir / "config.yaml").read_text()  # FSDP across the nodes


@pytest.mark.slurm
@pytest.mark.slow
def test_dinov2_launcher_trains_on_two_nodes(cluster, tmp_path):
    launcher = "-m dinov2.run.train.train --nodes 2 --ngpus 1 --partition debug --timeout 10"
    job, output_dir = submit(cluster, launcher, tmp_path)
    wait_completed(cluster, job, output_dir)

    assert_two_rank_run(output_dir)
    assert submitit_ranks(output_dir, job) == {0: (0, 2), 1: (1, 2)}  # rank 0 on the first node, rank 1 on the second
    assert_one_task_per_node(cluster, job)


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_two_node_job_resumes_from_last_checkpoint(cluster, tmp_path):
    # 2 iterations per "epoch", a checkpoint every 6 iterations (DINOv2: 3 * OFFICIAL_EPOCH_LENGTH), no teacher dumps;
    # 200 iterations, so that the requeue lands before the job ends (80 raced it once on a busy machine)
    launcher = "-m dinov2_eqcoh.run.train --cluster-profile local --nodes 2 --ngpus 1"
    job, output_dir = submit(cluster, launcher, tmp_path, "optim.epochs=100", "evaluation.eval_period_iterations=0")
    log = output_dir / "logs" / "log.txt"

    def starts(name: str = "log.txt") -> list[int]:
        path = output_dir / "logs" / name
        return [int(n) for n in STARTED.findall(path.read_text())] if path.exists() else []

    # `scontrol requeue` of the running two-node job: SLURM kills both tasks and reruns the job on both nodes
    wait_for(cluster, job, output_dir, lambda: checkpointed(output_dir) > 0, "first checkpoint of both ranks")
    assert job_field(cluster, job, "JobState") == "RUNNING", "the job ended before it could be requeued"
    cluster.run(["scontrol", "requeue", job])
    release(cluster, job)
    wait_completed(cluster, job, output_dir, timeout_s=240)

    assert len(starts()) == 2, f"iterations at (re)starts: {starts()}\n{log.read_text()[-3000:]}"
    first, second = starts()
    assert first == 0 and second > 0 and second % 6 == 0, f"not resumed right after a checkpoint: {starts()}"
    assert starts("log.txt.rank1") == starts(), f"ranks resumed differently: {starts()} vs {starts('log.txt.rank1')}"
    assert job_field(cluster, job, "Restarts") == "1"
    assert job_field(cluster, job, "NodeList") == NODELIST  # the rerun spans both nodes again
    assert submitit_ranks(output_dir, job) == {0: (0, 2), 1: (1, 2)}
    for rank in (0, 1):
        assert (output_dir / f"model_final.rank_{rank}.pth").is_file()
    # the iterations continue: the rerun logged iterations past the one it resumed from
    its = [int(n) for n in re.findall(r"Training  \[\s*(\d+)/", log.read_text())]
    assert its and max(its) > second, its[-5:]
