# SPDX-License-Identifier: Apache-2.0
# The k-NN vote follows DINOv2's dinov2/eval/knn.py (Meta Platforms, Apache-2.0).
"""Invariance (semantic) evaluation of a frozen backbone: k-NN and linear-probe top-1 on a labelled dataset.

    python -m dinov2_eqcoh.eval.invariance --weights <ckpt> --output-dir <dir> \
        [--dataset Synthetic:...|ImageFolder:root=...] [--test-dataset ...] [--features cls,concat]

- k-NN as DINO/DINOv2's knn eval: L2-normalised features, cosine similarity to every training feature, the k = 20
  nearest neighbours vote for their class with weights softmax(sim / T), T = 0.07; top-1 accuracy.
- Linear probe: multinomial logistic regression on the frozen features (standardised with the training split's
  statistics), full-batch L-BFGS for a few hundred steps with a small L2 penalty; top-1 accuracy.

The paper's claim to check: the equivariance objective keeps invariance (linear top-1 DINOv2 82.60 -> 82.73), so
these numbers should not drop when `eqcoh.loss_weight > 0`. Outputs invariance.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

import torch
from torch import nn

from dinov2_eqcoh.eval.features import (
    add_backbone_args,
    backbone_from_args,
    default_device,
    extract_features,
    make_eval_dataset,
    parse_feature_kinds,
    setup_cli_logging,
)

logger = logging.getLogger("dinov2.eqcoh")


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 of the temperature-weighted k-NN vote on cosine similarity.

    Args:
        train_features: (N, D); train_labels: (N,) int.
        test_features: (M, D); test_labels: (M,) int.
        k: neighbours (clamped to N); temperature: T of softmax(sim / T).
        chunk: test features per similarity matmul; device: where to compute (default: the accelerator if any).
    """
    device = torch.device(device) if device is not None else default_device()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = nn.functional.normalize(train_features.float().to(device), dim=1)
    test = nn.functional.normalize(test_features.float().to(device), dim=1)
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    k = min(int(k), train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], chunk):
        sims, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)  # (B, k)
        weights = torch.softmax(sims / temperature, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes, device=device).scatter_add_(1, train_labels[idx], weights)
        correct += int((votes.argmax(dim=1) == test_labels[start:start + chunk]).sum())
    return correct / test.shape[0]


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    steps: int = 300,
    weight_decay: float = 1e-4,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 of a logistic-regression probe fitted with full-batch L-BFGS on standardised features.

    Args:
        train_features: (N, D); train_labels: (N,) int.
        test_features: (M, D); test_labels: (M,) int.
        steps: L-BFGS iterations; weight_decay: L2 penalty on the weights.
    """
    device = torch.device(device) if device is not None else default_device()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean = train_features.float().mean(dim=0, keepdim=True)
    std = train_features.float().std(dim=0, keepdim=True).clamp(min=1e-6)
    x = ((train_features.float() - mean) / std).to(device)
    y = train_labels.to(device)
    linear = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=int(steps), history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(linear(x), y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = linear(((test_features.float() - mean) / std).to(device)).argmax(dim=1).cpu()
    return float((pred == test_labels).float().mean())


def evaluate_invariance(
    backbone: nn.Module,
    train_dataset,
    test_dataset,
    features: str | Sequence[str] = ("cls", "concat"),
    k: int = 20,
    temperature: float = 0.07,
    linear_steps: int = 300,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> dict:
    """k-NN and linear-probe top-1 of frozen features, per feature kind.

    Args:
        backbone: frozen encoder with DINOv2's `forward_features`.
        train_dataset, test_dataset: items (image (3, S, S) normalised, class label).
        features: kinds from FEATURE_KINDS (or "both").
        k, temperature: the k-NN vote; linear_steps, weight_decay: the linear probe.

    Returns:
        {"knn": {kind: top-1}, "linear": {kind: top-1}, "chance": 1 / classes, "num_classes", "n_train", "n_test",
        and the settings}.
    """
    kinds = parse_feature_kinds(features)
    device = torch.device(device) if device is not None else default_device()
    train_f, train_y = extract_features(backbone, train_dataset, None, kinds, batch_size, device, num_workers,
                                        desc=f"train features ({len(train_dataset)} images)")
    test_f, test_y = extract_features(backbone, test_dataset, None, kinds, batch_size, device, num_workers,
                                      desc=f"test features ({len(test_dataset)} images)")
    return evaluate_invariance_features(train_f, train_y, test_f, test_y, k, temperature, linear_steps,
                                        weight_decay, device)


def evaluate_invariance_features(
    train_features: dict[str, torch.Tensor],
    train_labels: torch.Tensor,
    test_features: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    linear_steps: int = 300,
    weight_decay: float = 1e-4,
    device: torch.device | str | None = None,
) -> dict:
    """`evaluate_invariance` on features already extracted: {kind: (N, D)} and labels (N,)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    results: dict = {"knn": {}, "linear": {}}
    for kind in train_features:
        args = (train_features[kind], train_labels, test_features[kind], test_labels)
        results["knn"][kind] = knn_accuracy(*args, k=k, temperature=temperature, device=device)
        results["linear"][kind] = linear_probe_accuracy(*args, steps=linear_steps, weight_decay=weight_decay,
                                                        device=device)
        logger.info(f"invariance {kind:8s} k-NN top-1 {results['knn'][kind]:.4f}, "
                    f"linear top-1 {results['linear'][kind]:.4f} (chance {1 / num_classes:.4f})")
    results.update({
        "chance": 1.0 / num_classes,
        "num_classes": num_classes,
        "n_train": int(train_labels.numel()),
        "n_test": int(test_labels.numel()),
        "k": k,
        "temperature": temperature,
        "linear_steps": linear_steps,
        "weight_decay": weight_decay,
        "features": list(train_features),
    })
    return results


def split_dataset(dataset, test_fraction: float, seed: int = 0):
    """A seeded random (train, test) split of one labelled dataset."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, int(round(len(dataset) * test_fraction)))
    if n_test >= len(dataset):
        raise ValueError(f"dataset of {len(dataset)} images is too small to split with test fraction {test_fraction}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return torch.utils.data.Subset(dataset, perm[n_test:]), torch.utils.data.Subset(dataset, perm[:n_test])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.eval.invariance", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser)
    parser.add_argument("--dataset", "--train-dataset", dest="dataset", default=None,
                        help="labelled dataset: Synthetic:..., ImageFolder:root=<dir with class folders> or DINOv2's "
                             "ImageNet:split=TRAIN:root=..:extra=.. (default: Synthetic:n=2000:...:classes=10:seed=1 at "
                             "the eval size); --train-dataset as in DINOv2's knn/linear evals")
    parser.add_argument("--test-dataset", "--val-dataset", dest="test_dataset", default=None,
                        help="a separate test set, e.g. ImageNet:split=VAL:root=..:extra=.. (default: split --dataset)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of the images held out for scoring (default 0.3)")
    parser.add_argument("--features", default="cls,concat", help="cls, avgpool, concat or both (= cls,avgpool)")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the weighted k-NN vote (default 20, DINO's)")
    parser.add_argument("--temperature", type=float, default=0.07, help="temperature of the k-NN vote weights (default 0.07, DINO's)")
    parser.add_argument("--linear-steps", type=int, default=300, help="optimisation steps of the linear probe (default 300)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_cli_logging(args.output_dir)
    backbone, image_size = backbone_from_args(args)
    dataset_str = args.dataset or f"Synthetic:n=2000:size={image_size}:classes=10:seed=1"
    dataset = make_eval_dataset(dataset_str, image_size)
    if args.test_dataset:
        train_ds, test_ds = dataset, make_eval_dataset(args.test_dataset, image_size)
    else:
        train_ds, test_ds = split_dataset(dataset, args.test_fraction, args.seed)
    results = evaluate_invariance(
        backbone, train_ds, test_ds, features=args.features, k=args.k, temperature=args.temperature,
        linear_steps=args.linear_steps, batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
    )
    results.update({"weights": os.path.abspath(args.weights), "dataset": dataset_str,
                    "test_dataset": args.test_dataset, "image_size": image_size})
    with open(os.path.join(args.output_dir, "invariance.json"), "w") as f:
        json.dump(results, f, indent=2)
    summary = ", ".join(f"{k}: k-NN {results['knn'][k]:.3f} linear {results['linear'][k]:.3f}" for k in results["knn"])
    print(f"invariance top-1 ({args.output_dir}/invariance.json): {summary}; chance {results['chance']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
