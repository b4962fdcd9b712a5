# SPDX-License-Identifier: Apache-2.0
"""Run management: the run folder and the launchers.

- `folder`: a run folder refuses a changed model, records each change of config, and resumes from its newest
  readable checkpoint; the checks run at submission and again inside the job, before anything is written;
- `lock`: one writer per run folder (a lock naming its holder; taken over when the holder is gone or is this
  SLURM job requeued);
- `recover`: a damaged checkpoint is found before DINOv2 loads it, kept aside (`<name>.damaged`), and every rank
  resumes the newest iteration readable on all ranks;
- `train`: `python -m dinov2_eqcoh.run.train` submits training to SLURM (or runs it locally) through submitit.

May import: `dinov2_eqcoh.method`, `dinov2_eqcoh.data`, `dinov2_eqcoh.weights`, DINOv2 and third-party
libraries; never evaluations or experiments (checked by `tests/test_layout.py`).
"""
