# SPDX-License-Identifier: Apache-2.0
"""`python -m dinov2_eqcoh.experiments.bench` (see the package docstring)."""

from dinov2_eqcoh.experiments.bench.cli import main

if __name__ == "__main__":
    main()
