"""When to prune: accuracy vs sparsity for pruning at initialisation, during and after training.

For each (dataset, model) pair, every method is trained with the same total budget of ``--epochs`` epochs:

* PaI (snip, grasp, synflow, random): prune at initialisation, then train ``epochs``.
* gmp, rigl: train ``epochs`` from scratch while pruning / rewiring.
* oneshot-ft: train dense ``epochs/2``, prune (global magnitude), fine-tune ``epochs/2``.
* imp: ``rounds + 1`` trainings of ``epochs / (rounds + 1)`` each, rewinding to step ``rewind``.

Writes ``OUT/results.jsonl`` (one line per run, resumable: finished runs are skipped), ``OUT/results.md``
and ``OUT/accuracy_vs_sparsity.png``. Example (a few minutes on 2 CPU cores):

    python benchmarks/when_to_prune.py --pair mnist:lenet-300-100 --epochs 4 --out results/when_to_prune
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit import datasets
from prunekit.train import TrainConfig, Trainer

METHODS = ("random", "snip", "grasp", "synflow", "gmp", "rigl", "oneshot-ft", "imp")


def load(dataset: str, subset: int | None, seed: int):
    if dataset == "mnist":
        (x, y), (xt, yt) = datasets.load_mnist("train"), datasets.load_mnist("test")
        x, xt = datasets.mnist_normalize(x), datasets.mnist_normalize(xt)
    elif dataset == "fashion-mnist":
        (x, y), (xt, yt) = datasets.load_fashion_mnist("train"), datasets.load_fashion_mnist("test")
        x, xt = (x - 0.2860) / 0.3530, (xt - 0.2860) / 0.3530
    else:
        raise SystemExit(f"unknown dataset {dataset}")
    if subset:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:subset]
        x, y = x[idx], y[idx]
    return (x, y), (xt, yt)


def run_one(
    model_name: str, method: str, sparsity: float, train, test, epochs: int, seed: int, lr: float, rounds: int
) -> dict:
    torch.manual_seed(seed)
    model = pk.build_model(f"prunekit:{model_name}", pretrained=False)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=lr, seed=seed, progress=False)
    t0 = time.perf_counter()
    notes: list[str] = []
    if method == "oneshot-ft":
        half = max(1, epochs // 2)
        Trainer(model, train, None, TrainConfig(**{**cfg.__dict__, "epochs": half})).fit()
        pk.prune(model, "magnitude", sparsity=sparsity, allocation="global", measure=False)
        finetune = TrainConfig(**{**cfg.__dict__, "epochs": epochs - half, "lr": lr / 10})
        hist = Trainer(model, train, test, finetune).fit()
    elif method == "imp":
        per = max(1, epochs // (rounds + 1))
        cb = pk.train.LotteryTicket(sparsity, rounds=rounds, rewind_step=20)
        hist = Trainer(model, train, test, TrainConfig(**{**cfg.__dict__, "epochs": per}), method=cb).fit()
        notes = hist.notes
    else:
        options = {"update_every": 50} if method in ("rigl", "set") else {}
        hist = Trainer(model, train, test, cfg, method=method, sparsity=sparsity, method_options=options).fit()
    seconds = time.perf_counter() - t0
    acc = hist.final.get("val_accuracy")
    zeros = total = 0
    for _, _, _, mask in pk.apply.masks.masked_parameters(model):
        total += mask.numel()
        zeros += int((~mask).sum())
    return {
        "method": method,
        "target_sparsity": sparsity,
        "sparsity": zeros / total if total else 0.0,
        "accuracy": acc,
        "seconds": seconds,
        "notes": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", action="append", help="dataset:model, e.g. fashion-mnist:resnet-small (repeatable)")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=None, help="training images used (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="IMP pruning rounds")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/when_to_prune")
    args = ap.parse_args()
    pairs = args.pair or ["mnist:lenet-300-100", "fashion-mnist:resnet-small"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.jsonl"
    done = {json.dumps(r["key"]) for r in map(json.loads, store.read_text().splitlines())} if store.is_file() else set()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for pair in pairs:
        dataset, model_name = pair.split(":")
        train, test = load(dataset, args.subset, args.seed)
        protocol = {
            "dataset": dataset,
            "model": model_name,
            "train_images": len(train[0]),
            "test_images": len(test[0]),
            "epochs_budget": args.epochs,
            "seed": args.seed,
            "lr": args.lr,
            "batch_size": 128,
            "train_sha256": datasets.sha256_of_tensor(train[0]),
            "torch": torch.__version__,
        }
        jobs = [("dense", 0.0)] + [(m, float(s)) for m in args.methods.split(",") for s in args.sparsities.split(",")]
        for method, s in jobs:
            key = [dataset, model_name, method, s, args.epochs, len(train[0]), args.seed, args.rounds]
            if json.dumps(key) in done:
                continue
            print(f"{pair} {method} {s}", flush=True)
            if method == "dense":
                torch.manual_seed(args.seed)
                model = pk.build_model(f"prunekit:{model_name}", pretrained=False)
                t0 = time.perf_counter()
                hist = Trainer(
                    model, train, test, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, progress=False)
                ).fit()
                row = {
                    "method": "dense",
                    "target_sparsity": 0.0,
                    "sparsity": 0.0,
                    "accuracy": hist.final["val_accuracy"],
                    "seconds": time.perf_counter() - t0,
                    "notes": [],
                }
            else:
                row = run_one(model_name, method, s, train, test, args.epochs, args.seed, args.lr, args.rounds)
            row = {"key": key, **protocol, **row}
            print(
                f"  accuracy {row['accuracy']:.4f} sparsity {row['sparsity']:.4f} ({row['seconds']:.0f}s)", flush=True
            )
            with store.open("a") as f:
                f.write(json.dumps(row) + "\n")
    write_report(out)


def write_report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lines = ["# When to prune: accuracy (%) vs sparsity, equal training budgets", ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["dataset"], r["model"]) for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
    for ax, (ds, model) in zip(axes[0], pairs):
        sub = [r for r in rows if r["dataset"] == ds and r["model"] == model]
        sparsities = sorted({r["target_sparsity"] for r in sub if r["method"] != "dense"})
        dense = next((r for r in sub if r["method"] == "dense"), None)
        lines += [
            f"## {ds}, {model} (budget {sub[0]['epochs_budget']} epochs, {sub[0]['train_images']} training images)",
            "",
        ]
        if dense:
            lines += [f"dense: {100 * dense['accuracy']:.2f}%", ""]
        lines += [
            "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " | time (s) |",
            "|---|" + "---|" * (len(sparsities) + 1),
        ]
        for m in dict.fromkeys(r["method"] for r in sub if r["method"] != "dense"):
            by = {r["target_sparsity"]: r for r in sub if r["method"] == m}
            cells = [f"{100 * by[s]['accuracy']:.2f}" if s in by else "-" for s in sparsities]
            secs = sum(r["seconds"] for r in by.values())
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {secs:.0f} |")
            xs = [s for s in sparsities if s in by]
            ax.plot(xs, [100 * by[s]["accuracy"] for s in xs], marker="o", label=m)
        if dense:
            ax.axhline(100 * dense["accuracy"], color="k", ls="--", lw=1, label="dense")
        ax.set_title(f"{ds} / {model}")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        lines.append("")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sparsity.png", dpi=120)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
