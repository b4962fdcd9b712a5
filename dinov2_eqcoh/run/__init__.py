"""Launchers: `python -m dinov2_eqcoh.run.train` submits training to SLURM (or runs it locally) through submitit."""
