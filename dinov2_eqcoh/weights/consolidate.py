# SPDX-License-Identifier: Apache-2.0
"""One whole checkpoint from the per-rank shards of a multi-process (FSDP) run.

    python -m dinov2_eqcoh.weights.consolidate <run-dir> [--iteration N] [--output <file>]

A run trained by N processes writes `model_<it>.rank_<r>.pth`, r = 0..N-1, each holding its rank's shard of every
sharded module (DINOv2 saves FSDP's LOCAL_STATE_DICT): no single file has the student's decoders or the whole
backbone, and unpickling one needs the run's process group. This command starts N local CPU processes (gloo,
`torch.distributed.run`; no GPU is used), builds the model as DINOv2's `train.py` does (`EqCohSSLMetaArch` from the
run's config, `prepare_for_distributed_training`; tested on shards written by CPU runs), loads each rank's file into its rank strictly,
gathers FSDP's FULL_STATE_DICT on rank 0, checks it loads strictly into an unwrapped model, and writes
`<run>/consolidated/model_<it>.pth` = {"model": state dict, "iteration": it} atomically. That file is read like a
one-process run's checkpoint by the reconstruction diagnostics (`--checkpoint`), `export`, and the evaluations.
The run's own files are only read; `consolidated/` is outside what DINOv2 resumes from. Memory: each process
builds the whole model before sharding it (ViT-L/16 with its heads: about 0.66 B parameters, 2.6 GB in fp32, by
parameter count), so N = 64 wants a CPU node with a few hundred GB, not a login node.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from dinov2_eqcoh.weights.run_config import RANK_FILE

OUTPUT_DIR = "consolidated"


def rank_files(run_dir: str | os.PathLike, iteration: int | None = None) -> tuple[str, list[Path]]:
    """The checkpoint name (`model_0000011` or `model_final`) and its rank files, rank 0 first.

    Args:
        run_dir: the run folder.
        iteration: which checkpoint (default: `model_final` if present, else the highest iteration).

    Raises:
        FileNotFoundError: no such checkpoint, or some rank's file is missing (naming the ranks found).
    """
    run_dir = Path(run_dir)
    by_name: dict[str, dict[int, Path]] = {}
    for p in run_dir.glob("model_*.rank_*.pth"):
        m = RANK_FILE.match(p.name)
        if m:
            by_name.setdefault(f"model_{m['it']}", {})[int(m["rank"])] = p
    if not by_name:
        raise FileNotFoundError(f"{run_dir}: no training checkpoint model_*.rank_*.pth in it")
    if iteration is not None:
        name = f"model_{int(iteration):07d}"
        if name not in by_name:
            raise FileNotFoundError(f"{run_dir}: no {name}.rank_*.pth; checkpoints there: {', '.join(sorted(by_name))}")
    else:
        name = "model_final" if "model_final" in by_name else max((n for n in by_name if n != "model_final"))
    ranks = by_name[name]
    missing = [r for r in range(max(ranks) + 1) if r not in ranks]
    if missing:
        raise FileNotFoundError(f"{run_dir}: {name} has no file for rank(s) {missing}; found ranks {sorted(ranks)}")
    return name, [ranks[r] for r in sorted(ranks)]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def consolidate(run_dir: str | os.PathLike, iteration: int | None = None, output: str | os.PathLike | None = None,
                timeout: float | None = None) -> Path:
    """Write one whole checkpoint from the rank files of `run_dir` (see the module docstring); returns its path.

    A one-process run's file is whole already: it is refused with that said (use it directly).
    """
    from dinov2_eqcoh.weights.run_config import holds_sharded_tensors

    run_dir = Path(run_dir)
    name, files = rank_files(run_dir, iteration)
    if len(files) == 1 and not holds_sharded_tensors(files[0]):
        raise ValueError(f"{files[0]}: written by one process, already whole: use it directly")
    out = Path(output) if output else run_dir / OUTPUT_DIR / f"{name}.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(len(files)), "--master_addr",
           "127.0.0.1", "--master_port", _free_port(), "-m", "dinov2_eqcoh.weights.consolidate", "--worker",
           str(run_dir), "--name", name, "--output", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # CPU processes, whatever the node
    proc = subprocess.run(cmd, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"consolidating {name} of {run_dir} failed (exit {proc.returncode}); its output is above")
    return out


def _worker(run_dir: Path, name: str, output: Path) -> None:
    """One rank: build the model as DINOv2's train.py does, load this rank's file strictly, gather on rank 0."""
    import torch
    import torch.distributed as dist
    from dinov2 import distributed
    from dinov2.fsdp import FSDPCheckpointer, _local_state_dict_type
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.method.ssl_meta_arch import EqCohSSLMetaArch
    from dinov2_eqcoh.weights.files import atomic_output
    from dinov2_eqcoh.weights.run_config import checkpoint_iteration, config_for_checkpoint

    distributed.enable(overwrite=True)
    rank, world = distributed.get_global_rank(), distributed.get_global_size()
    path = run_dir / f"{name}.rank_{rank}.pth"
    config = config_for_checkpoint(path)
    if config is None:
        raise FileNotFoundError(f"{run_dir}: no config.yaml; the model cannot be rebuilt")
    cfg = load_config(config)
    # the model the training seam (meta_arch.EqCohMetaArch) builds, without its run-folder handling (that would
    # act on the run's files); λ = 0 builds exactly DINOv2's SSLMetaArch modules
    model = EqCohSSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    data = FSDPCheckpointer(model, save_dir=str(run_dir))._load_file(str(path))
    with _local_state_dict_type(model):
        # with use_orig_params, FSDP's local state dict holds each parameter's local view *and* the flat shard
        # (`<module>._flat_param`); loading the views fills the shard, as DINOv2's resume does (fvcore,
        # strict=False). Anything else missing or unexpected is an error.
        result = model.load_state_dict(data["model"], strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("._flat_param")]
    if result.missing_keys or unexpected:
        raise RuntimeError(f"{path} does not fit the model of {config}: missing {result.missing_keys[:10]}, "
                           f"unexpected {unexpected[:10]}")
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True,
                                                                                         rank0_only=True)):
        full = model.state_dict()
    if rank == 0:
        full = {k: v.detach().clone() for k, v in full.items()}
        EqCohSSLMetaArch(cfg).load_state_dict(full)  # strict, into an unwrapped model: what readers will do
        it = data.get("iteration", checkpoint_iteration(path))
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(output) as tmp, open(tmp, "wb") as f:  # a file object: a full disk is named
            torch.save({"model": full, "iteration": it,
                        "consolidated_from": [f"{name}.rank_{r}.pth" for r in range(world)]}, f)
        print(f"wrote {output}: {len(full)} tensors of {name} (iteration {it}) from {world} rank files", flush=True)
    dist.barrier()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_eqcoh.weights.consolidate",
                                description="One whole checkpoint from the per-rank shards of a multi-process run.")
    p.add_argument("run_dir", help="the run folder (holds model_<it>.rank_<r>.pth and config.yaml)")
    p.add_argument("--iteration", type=int, default=None,
                   help="which checkpoint (default: model_final, else the highest iteration)")
    p.add_argument("--output", default=None, help="the file to write (default <run-dir>/consolidated/<name>.pth)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one rank, started by the command
    p.add_argument("--name", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.worker:
        _worker(Path(args.run_dir), args.name, Path(args.output))
        return 0
    try:
        consolidate(args.run_dir, args.iteration, args.output)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
