# SPDX-License-Identifier: Apache-2.0
"""Experiments that train and probe end to end, on top of everything else:

- `demo`: `make demo`, three models on the built-in dataset, probed, with a report;
- `study`: `make study`, training seeds x models with paired 95 % intervals, resumable;
- `regime`: the search for a small-scale regime where the decoders act, on their diagnostics only, resumable;
- `curves`: one long run per model probed at log-spaced iterations, against untrained and raw-pixel references;
- `bench`: `python -m dinov2_eqcoh.experiments.bench`, FLOPs, step time, memory and augmentation throughput;
- `gpucheck`: the one-shot check run on a lent GPU;
- `headline`: `make readme-headline`, the regime study's headline tables copied into the README.

May import any part of `dinov2_eqcoh`; nothing imports this package except its own modules.
"""
