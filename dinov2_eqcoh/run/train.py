"""Submit dinov2_eqcoh training to SLURM through DINOv2's submitit launcher, with cluster profiles.

    python -m dinov2_eqcoh.run.train --cluster-profile juwels_booster --account <project> --nodes 4 \\
        --config-file configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml --output-dir /p/scratch/<project>/eqcoh/vitl16_se2 \\
        train.dataset_path=ImageNet:split=TRAIN:root=<R>:extra=<E>

This is DINOv2's `dinov2/run/train/train.py` with three changes:

* resources come from a profile, `slurm/profiles/NAME.yaml` (or a path), with keys `partition`, `account`,
  `cpus_per_task`, `mem_gb`, `constraint`, `timeout_min`, `gpus_per_node`, `qos`; flags override profile values;
* no guesses about Meta's clusters: no partition from `uname`, no `/checkpoint/$USER` (the output directory
  defaults to `./experiments/<config name>[-<hash of the overrides>]`, one folder per command, so that submitting
  the same command again resumes; DINOv2's `%j` gives a new folder, and a new run, per job), and `--account`,
  `--qos`, `--cpus-per-task`, `--mem` flags;
* `--cluster local|debug` runs the same task here through submitit's local executors, and `--dry-run` prints
  the sbatch script instead of submitting it.

The task is DINOv2's `Trainer`: the job runs `dinov2.train.main`, which builds the plugin's meta-architecture
from the config (`train.meta_arch`), and a requeued, pre-empted or timed-out job resumes from its last
checkpoint (`Trainer.checkpoint` returns a `submitit.helpers.DelayedSubmission` of a fresh trainer; training
resumes from `last_checkpoint.rank_*` in the output directory). In the job, `dinov2.distributed` reads the
SLURM_* variables; nothing is exported for it. DINOv2's own launcher runs plugin configs unchanged as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import submitit
import yaml
from dinov2.logging import setup_logging
from dinov2.run.submit import get_args_parser as get_submit_args_parser
from dinov2.train import get_args_parser as get_train_args_parser
from dinov2.utils.cluster import ClusterType, get_slurm_executor_parameters

from dinov2_eqcoh.run.folder import check_before_submit
from dinov2_eqcoh.run.lock import RunFolderLockedError

try:
    from dinov2.run.train.train import Trainer as DINOv2Trainer
except ModuleNotFoundError as e:  # upstream's setup.py (find_packages) skips dinov2/run/train: no __init__.py
    raise ModuleNotFoundError(
        f"{e}: this DINOv2 installation lacks its launcher package dinov2.run.train (upstream's setup.py does not "
        "install dinov2/run/train, which has no __init__.py); reinstall DINOv2 with `make dinov2`"
    ) from e

logger = logging.getLogger("dinov2")

PROFILES_ENV = "DINOV2_EQCOH_PROFILES"
PLACEHOLDER = "CHANGE_ME"  # a profile value that must be replaced on the command line (e.g. the account)
DEFAULT_OUTPUT_ROOT = "./experiments"  # + the config's name (default_output_dir)
JOB_NAME = "dinov2_eqcoh:train"
CLUSTERS = ("slurm", "local", "debug")

# profile key -> (argparse dest, accepted types); each key has a flag of the same meaning
PROFILE_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "partition": ("partition", (str,)),
    "account": ("account", (str,)),
    "qos": ("qos", (str,)),
    "constraint": ("constraint", (str,)),
    "gpus_per_node": ("ngpus", (int,)),
    "cpus_per_task": ("cpus_per_task", (int,)),
    "mem_gb": ("mem", (int, float)),
    "timeout_min": ("timeout", (int,)),
    "gpu_request": ("gpu_request", (str,)),
}
# how the job asks for its GPUs: sbatch --gpus-per-node=G (submitit's and DINOv2's way) or --gres=gpu:G (what
# JSC's own JUWELS Booster job scripts use, e.g. FZJ-JSC/tutorial-multi-gpu: `--partition booster --gres=gpu:4`)
GPU_REQUESTS = ("gpus_per_node", "gres")


# ---- profiles ----


def profiles_dir() -> Path:
    """The profile folder: $DINOV2_EQCOH_PROFILES, else `slurm/profiles` of the repository (editable install)."""
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV])
    return Path(__file__).resolve().parents[2] / "slurm" / "profiles"


def available_profiles() -> list[str]:
    folder = profiles_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_profile(name: str) -> dict[str, Any]:
    """Read a cluster profile by name (`slurm/profiles/NAME.yaml`) or by path (`*.yaml`, or any existing file).

    Returns:
        The profile's values, keyed like `PROFILE_KEYS`; null values are dropped.

    Raises:
        ValueError: the profile does not exist, is not a mapping, or has an unknown key or a value of a wrong type.
    """
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        folder = profiles_dir()
        if not folder.is_dir():
            raise ValueError(
                f"cluster profile '{name}': no profile folder at {folder}; set {PROFILES_ENV} to the folder holding "
                f"NAME.yaml profiles (slurm/profiles in the dinov2_eqcoh repository) or pass a path to a YAML file"
            )
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(
                f"unknown cluster profile '{name}': available in {folder}: {', '.join(available_profiles()) or 'none'}"
            )
    if not path.is_file():
        raise ValueError(f"cluster profile file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"cluster profile {path} must be a mapping of {', '.join(PROFILE_KEYS)}")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ValueError(
            f"cluster profile {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PROFILE_KEYS)}"
        )
    profile = {}
    for key, value in data.items():
        types = PROFILE_KEYS[key][1]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            allowed = " or ".join(t.__name__ for t in types)
            raise ValueError(f"cluster profile {path}: '{key}' must be {allowed} or null, got {value!r}")
        profile[key] = value
    return profile


# ---- command line ----


INHERITED_HELP = {  # DINOv2's help texts that are wrong or silent here
    "opts": "config overrides as key=value (OmegaConf dotlist), e.g. optim.epochs=10 train.batch_size_per_gpu=64",
    "config_file": "the training config (YAML), e.g. configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml",
    "no_resume": "start over in --output-dir: the old run's files move to old_runs/<stamp>/ first",
    "output_dir": "the run folder (default: ./experiments/<config name>[-<hash of the overrides>]); submitting the "
                  "same command again resumes it; %%j (job id) makes a new folder, and a new run, per job",
    "ngpus": "GPUs per node (default: the profile's, else DINOv2's 8)",
    "nodes": "nodes (default 1); processes = nodes x GPUs per node",
    "timeout": "job time limit in minutes (default: the profile's, else DINOv2's 2800)",
    "partition": "SLURM partition (default: the profile's, else the cluster's default)",
    "use_volta32": "DINOv2's flag for Meta's cluster: the same as --constraint volta32gb",
    "eval_only": argparse.SUPPRESS,  # DINOv2's evaluation-only mode: not a training submission
    "eval": argparse.SUPPRESS,
}


def clarify_inherited_help(parser: argparse.ArgumentParser) -> None:
    """Replace the help of DINOv2's inherited arguments where it misleads here (Yacs syntax, no units)."""
    for action in parser._actions:
        if action.dest in INHERITED_HELP:
            action.help = INHERITED_HELP[action.dest]


def get_args_parser() -> argparse.ArgumentParser:
    """DINOv2's submit parser (with DINOv2's train parser as parent) plus account, qos, cpus, memory and profiles."""
    parser = get_submit_args_parser(
        description="Submit dinov2_eqcoh (DINOv2) training to SLURM; flags override the cluster profile",
        parents=[get_train_args_parser(add_help=False)],
    )
    # None marks "not given", so that the profile can fill it; DINOv2's defaults (8 GPUs, 2800 min) come last and
    # its partition guessed from `uname` is dropped (None: the cluster's default partition)
    parser.set_defaults(ngpus=None, timeout=None, partition=None)
    parser.prog = "python -m dinov2_eqcoh.run.train"
    clarify_inherited_help(parser)
    parser.add_argument("--account", default=None, help="SLURM account (budget) to charge")
    parser.add_argument("--qos", default=None, help="SLURM quality of service")
    parser.add_argument("--constraint", default=None, help="SLURM node features, e.g. 'volta32gb'")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task, one task per GPU (DINOv2: 10)")
    parser.add_argument("--mem", type=float, default=None, metavar="GB", help="memory per node in GB; 0 = all of it")
    parser.add_argument(
        "--gpu-request", choices=GPU_REQUESTS, default=None,
        help="ask for the GPUs with --gpus-per-node=G (default) or --gres=gpu:G (JUWELS' profile)",
    )
    parser.add_argument(
        "--cluster-profile", default=None, metavar="NAME", help="slurm/profiles/NAME.yaml or a path to a YAML profile"
    )
    parser.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default="slurm",
        help="slurm: submit with sbatch; local: run the tasks here as subprocesses; debug: run in this process",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit without submitting")
    return parser


def resolve_resources(args: argparse.Namespace) -> argparse.Namespace:
    """Fill resource flags that were not given from the profile, then from DINOv2's defaults; check placeholders."""
    profile = load_profile(args.cluster_profile) if args.cluster_profile else {}
    for key, (dest, _) in PROFILE_KEYS.items():
        if getattr(args, dest) is None and key in profile:
            setattr(args, dest, profile[key])
        if getattr(args, dest) == PLACEHOLDER:
            raise ValueError(
                f"cluster profile '{args.cluster_profile}' leaves '{key}' as {PLACEHOLDER}: pass "
                f"--{dest.replace('_', '-')} (or edit the profile)"
            )
    dinov2_parser = get_submit_args_parser(add_help=False)
    for dest in ("ngpus", "timeout"):
        if getattr(args, dest) is None:
            setattr(args, dest, dinov2_parser.get_default(dest))
    if args.use_volta32 and args.constraint is None:
        args.constraint = "volta32gb"  # DINOv2's flag
    if args.gpu_request is None:
        args.gpu_request = "gpus_per_node"
    if args.gpu_request not in GPU_REQUESTS:
        raise ValueError(f"gpu_request must be one of {', '.join(GPU_REQUESTS)}, got {args.gpu_request!r}")
    if args.nodes < 1 or args.ngpus < 1:
        raise ValueError(f"--nodes and --ngpus must be >= 1, got {args.nodes} and {args.ngpus}")
    return args


# ---- submission ----


def make_executor(args: argparse.Namespace, name: str) -> submitit.AutoExecutor:
    """submitit executor with DINOv2's job layout (one task per GPU, signal 120 s before the end, 30 requeues)."""
    overrides = {
        "slurm_partition": args.partition,  # None: the cluster's default partition
        "slurm_account": args.account,
        "slurm_qos": args.qos,
        "slurm_constraint": args.constraint,
        "slurm_comment": args.comment or None,
        "slurm_exclude": args.exclude or None,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem,
    }
    params = get_slurm_executor_parameters(
        nodes=args.nodes,
        num_gpus_per_node=args.ngpus,
        # DINOv2's base values (mem_gb 0, cpus_per_task 10) without its `uname` cluster guess; the partition is
        # always overridden, so its FAIR default ("learnlab") never reaches sbatch
        cluster_type=ClusterType.FAIR,
        timeout_min=args.timeout,
        slurm_signal_delay_s=120,
        **{k: v for k, v in overrides.items() if v is not None or k == "slurm_partition"},
    )
    if params["slurm_partition"] is None:
        del params["slurm_partition"]
    if args.gpu_request == "gres":  # --gres=gpu:G instead of --gpus-per-node=G (same GPUs, one task each)
        params["slurm_gres"] = f"gpu:{params.pop('gpus_per_node')}"
    executor = submitit.AutoExecutor(folder=args.output_dir, cluster=args.cluster, slurm_max_num_timeout=30)
    executor.update_parameters(name=name, **params)
    return executor


def render_sbatch(executor: submitit.AutoExecutor) -> str:
    """The sbatch script submitit would submit (submitit's own rendering, as in its `_sbatch_test_record` test)."""
    slurm_executor = executor._executor
    if not isinstance(slurm_executor, submitit.SlurmExecutor):
        raise ValueError(f"--dry-run renders the sbatch script of --cluster slurm, not --cluster {executor.cluster}")
    return slurm_executor._make_submission_file_text(slurm_executor._submitit_command_str, uid="dry-run")


class Trainer(DINOv2Trainer):
    """DINOv2's submitit task (`dinov2.train.main`, requeue through `checkpoint()`), announcing its job.

    Each task prints its job id, rank, output folder and node to its submitit log (`<output>/<job>_<rank>_log.out`)
    and adds `job_id` to the arguments DINOv2 logs in `<output>/logs/log.txt[.rankN]`. Under submitit's
    local executor it exports the torch.distributed variables that SLURM would otherwise provide.
    """

    def checkpoint(self):
        # the requeued job continues its own run: --no-resume moved the old run away at the first start
        self.args.no_resume = False
        return super().checkpoint()

    def _setup_args(self):
        super()._setup_args()  # DINOv2: %j -> job id in the output directory
        job_env = submitit.JobEnvironment()
        if job_env.cluster != "slurm" and job_env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        self.args.job_id = str(job_env.job_id)
        node = os.environ.get("SLURMD_NODENAME", job_env.hostname)  # SLURM's node name (hostname: one machine)
        print(
            f"dinov2_eqcoh: {job_env.cluster} job {job_env.job_id}, rank {job_env.global_rank} of "
            f"{job_env.num_tasks}, output folder {self.args.output_dir}, node {node} "
            f"({job_env.node + 1} of {job_env.num_nodes})",
            flush=True,
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and apply the profile (nothing is built or submitted).

    Raises:
        ValueError: a bad profile or flag, or a missing config file.
    """
    args = resolve_resources(get_args_parser().parse_args(argv))
    if not os.path.isfile(args.config_file):
        raise ValueError(f"--config-file {args.config_file!r} does not exist")
    args.output_dir = os.path.abspath(args.output_dir or default_output_dir(args.config_file, args.opts or []))
    return args


def default_output_dir(config_file: str, opts: list[str]) -> str:
    """`experiments/<config name>[-<8 hex of the overrides>]`: the same command gets the same folder, so submitting
    it again resumes the run (a `%j` folder would start a new run per job)."""
    import hashlib

    name = Path(config_file).stem
    if opts:
        name += "-" + hashlib.sha256("\n".join(opts).encode()).hexdigest()[:8]
    return os.path.join(DEFAULT_OUTPUT_ROOT, name)


def prepare(argv: list[str] | None = None) -> tuple[argparse.Namespace, submitit.AutoExecutor]:
    """`parse`, then build the executor (nothing is submitted)."""
    args = parse(argv)
    return args, make_executor(args, name=JOB_NAME)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        args = parse(argv)
        # a folder that holds another model is refused now, before the executor exists and long before the job has
        # queued (dinov2_eqcoh.run.folder)
        plan = check_before_submit(args.config_file, args.opts or [], args.output_dir, args.no_resume,
                                   world_size=args.nodes * args.ngpus)
        logger.info(f"the job: {args.nodes} node(s) × {args.ngpus} GPU(s)")
        if plan is not None and plan.action != "new":
            logger.info(f"output folder, when the job starts: {plan.summary()}")
        if "%j" in args.output_dir:
            logger.warning(f"--output-dir {args.output_dir}: %j makes a new folder per job, so submitting this command "
                           "again starts a new run instead of resuming; use a fixed folder to resume")
        if args.dry_run:
            print(render_sbatch(make_executor(args, name=JOB_NAME)), end="")
            return 0
    except (ValueError, RunFolderLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        print("error: sbatch or srun is not on PATH: submit from a SLURM login node, or use --cluster local",
              file=sys.stderr)
        return 2
    executor = make_executor(args, name=JOB_NAME)

    job = executor.submit(Trainer(args))
    output_dir = args.output_dir.replace("%j", str(job.job_id))
    logger.info(f"Submitted job_id: {job.job_id}")
    logger.info(f"Logs and checkpoints will be saved at: {output_dir}")
    if args.cluster != "slurm":  # local and debug jobs run here: wait for them
        job.results()
        logger.info(f"Job {job.job_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
