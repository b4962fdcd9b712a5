# SPDX-License-Identifier: Apache-2.0
"""`python -m dinov2_eqcoh.plot <run-dir>`: training curves of a run folder (`dinov2_eqcoh.eval.training_curves`)."""

from dinov2_eqcoh.eval.training_curves import main

if __name__ == "__main__":
    raise SystemExit(main())
