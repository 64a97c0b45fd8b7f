"""Layer-wise solvers on models that are not language models: magnitude vs Wanda vs SparseGPT.

For each model x pattern (unstructured 0.5, 2:4) x method, the model is pruned with
:func:`prunekit.apply.solve.solve_layerwise` (sequential: every layer is calibrated on the inputs the already-pruned
layers before it produce) and measured:

* reconstruction error per layer, ``||W X - W' X||^2 / ||W X||^2``, on the inputs ``X`` that layer receives in
  the pruned model: on the calibration images (what the solvers minimise) and on held-out images; summed
  over layers (sum of errors / sum of references);
* output drift on the held-out images, ``||f'(x) - f(x)||^2 / ||f(x)||^2`` (logits of the pruned vs the dense model);
* top-1 accuracy on the held-out images, for the pretrained model;
* prune time (gathering + solving, one thread by default) and forward passes.

Models: torchvision resnet18 (ImageNet weights when torch's hub cache holds them, else random-init with
BatchNorm statistics set on the calibration images, as a trained network has them), a small torchvision
VisionTransformer (random-init) and ccexam's pretrained MNIST CNN. Images: Fashion-MNIST (resnet18, ViT;
28x28 grayscale, upsampled to 64x64 and repeated to 3 channels: no natural RGB images are available offline)
and MNIST (the MNIST CNN). The first convolution of each model (1 or 3 input channels) cannot be 2:4: it
stays dense under 2:4 (``skip_incompatible``), as do the final classifiers (the default everywhere).

    python benchmarks/solvers_any_model.py --out docs/results/solvers
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import prunekit as pk
from prunekit import datasets
from prunekit.apply.plan import split_by_pattern
from prunekit.apply.solve import dense_matrices, reconstruction_errors, solve_layerwise
from prunekit.models import load_ccexam_mnist_cnn
from prunekit.targets import select_targets

METHODS = ("magnitude", "wanda", "sparsegpt")
#: (method, sequential): every method sequentially, then the data-driven ones in one pass over the dense model
RUNS = (("magnitude", True), ("wanda", True), ("sparsegpt", True), ("wanda", False), ("sparsegpt", False))
PATTERNS = (None, "2:4")


def fashion_images(n_calib: int, n_held: int, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x, _ = datasets.load_fashion_mnist("train")
    xt, _ = datasets.load_fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    calib = x[torch.randperm(len(x), generator=g)[:n_calib]]
    held = xt[torch.randperm(len(xt), generator=g)[:n_held]]

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        return (t - 0.2860) / 0.3530

    info = {
        "dataset": "fashion-mnist",
        "calibration": "train split",
        "held_out": "test split",
        "size": size,
        "calibration_sha256": datasets.sha256_of_tensor(calib),
    }
    return prep(calib), prep(held), info


def mnist_images(n_calib: int, n_held: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    x, _ = datasets.load_mnist("train")
    xt, yt = datasets.load_mnist("test")
    g = torch.Generator().manual_seed(0)
    calib = x[torch.randperm(len(x), generator=g)[:n_calib]]
    idx = torch.arange(len(xt))[:n_held]
    info = {
        "dataset": "mnist",
        "calibration": "train split",
        "held_out": f"first {n_held} test images",
        "calibration_sha256": datasets.sha256_of_tensor(calib),
    }
    return datasets.mnist_normalize(calib), datasets.mnist_normalize(xt[idx]), yt[idx], info


def resnet18(calib: torch.Tensor) -> tuple[nn.Module, str]:
    from torchvision.models import ResNet18_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    model = torchvision.models.resnet18()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), f"ImageNet weights ({path.name})"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for m in model.modules():  # cumulative BatchNorm statistics over the calibration images
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in calib.split(64):
            model(batch)
    return model.eval(), "random init (no weights in the hub cache), BatchNorm statistics from the calibration images"


def vit() -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=8, num_layers=6, num_heads=6, hidden_dim=384, mlp_dim=1536, num_classes=10
    )
    # torchvision starts the classifier at zero (all logits 0); a random head gives the output drift a scale
    nn.init.normal_(model.heads.head.weight, std=384**-0.5)
    return model.eval(), (
        "random init (classifier N(0, 1/384) instead of zeros); 64x64 input, patch 8, 6 layers, "
        "width 384, 6 heads, MLP 1536"
    )


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(b) for b in x.split(64)])


def run(
    name: str, base: nn.Module, weights: str, calib: torch.Tensor, held: torch.Tensor, labels, data: dict, batch: int
) -> list[dict]:
    rows = []
    dense_out = logits(base, held)
    calibration = list(calib.split(batch))
    held_batches = list(held.split(batch))
    for pattern in PATTERNS:
        per_method = {}
        for method, sequential in RUNS:
            model = copy.deepcopy(base)
            targets, misfits = split_by_pattern(
                select_targets(model).targets, pk.parse_pattern(pattern), skip_incompatible=True
            )
            names = [t.name for t in targets]
            dense = dense_matrices(model, names)
            t0 = time.perf_counter()
            result = solve_layerwise(
                model,
                method,
                sparsity=0.5,
                pattern=pattern,
                calibration=calibration,
                targets=targets,
                progress=False,
                sequential=sequential,
            )
            seconds = time.perf_counter() - t0
            on_calib = reconstruction_errors(model, dense, calibration)
            on_held = reconstruction_errors(model, dense, held_batches)
            out = logits(model, held)
            row = {
                "model": name,
                "weights": weights,
                "pattern": str(pk.parse_pattern(pattern)),
                "method": method,
                "sequential": sequential,
                "layers": len(names),
                "left_dense": [n for n, _ in misfits],
                "relative_error_calibration": sum(e.error for e in on_calib.values())
                / sum(e.reference for e in on_calib.values()),
                "relative_error_held_out": sum(e.error for e in on_held.values())
                / sum(e.reference for e in on_held.values()),
                "output_drift": float((out - dense_out).pow(2).sum() / dense_out.pow(2).sum()),
                "seconds": seconds,
                "forward_passes": result.forward_passes,
                "per_layer_calibration": {n: e.relative for n, e in on_calib.items()},
                "per_layer_held_out": {n: e.relative for n, e in on_held.items()},
                "data": data,
                "calibration_images": len(calib),
                "held_out_images": len(held),
            }
            if labels is not None:
                row["accuracy"] = float((out.argmax(1) == labels).float().mean())
                row["dense_accuracy"] = float((dense_out.argmax(1) == labels).float().mean())
            per_method[method if sequential else f"{method} (one pass)"] = row
            print(
                f"{name} {row['pattern']} {method} {'sequential' if sequential else 'one pass'}: "
                f"calib {row['relative_error_calibration']:.4f} held {row['relative_error_held_out']:.4f} "
                f"drift {row['output_drift']:.4f} {seconds:.1f}s",
                flush=True,
            )
        layers = per_method["wanda"]["per_layer_calibration"]
        err = {m: per_method[m]["per_layer_calibration"] for m in ("sparsegpt", "wanda", "magnitude")}
        ordered = [n for n in layers if err["sparsegpt"][n] < err["wanda"][n] < err["magnitude"][n]]
        for row in per_method.values():
            row["layers_ordered"] = len(ordered)
        rows += per_method.values()
    return rows


def write(rows: list[dict], out: Path, protocol: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "any_model.json").write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Layer-wise solvers on CNNs and a ViT: magnitude vs Wanda vs SparseGPT",
        "",
        "Written by `benchmarks/solvers_any_model.py` (`prunekit.apply.solve.solve_layerwise`). Sequential: each layer",
        "is calibrated on the inputs of the already-pruned layers before it (one partial forward pass per layer);",
        "one pass: every layer's statistics from one pass over the dense model. Relative",
        "reconstruction error `sum_l ||W_l X_l - W'_l X_l||^2 / sum_l ||W_l X_l||^2` over the pruned layers, each",
        "on the inputs it receives in the pruned model; output drift `||f'(x) - f(x)||^2 / ||f(x)||^2` of the",
        "logits on held-out images. Sparsity 0.5 (unstructured) or 2:4; layers whose input channels are not a",
        "multiple of 4 (the first convolution) stay dense under 2:4; the classifier stays dense. The last",
        "column counts the layers where SparseGPT < Wanda < magnitude (sequential runs, calibration inputs).",
        "On a random-init model the output drift says how far the logits move, not how a task suffers; the",
        "pretrained MNIST CNN also gives the accuracy.",
        "",
        (
            f"torch {protocol['torch']}, torchvision {protocol['torchvision']}, {protocol['threads']} thread(s), "
            f"{protocol['machine']}." + (f" {protocol['note']}" if protocol.get("note") else "")
        ),
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        first = sub[0]
        data = first["data"]
        lines += [
            f"## {model}",
            "",
            f"Weights: {first['weights']}. Images: {data['dataset']} "
            f"({first['calibration_images']} calibration images from the {data['calibration']}, "
            f"{first['held_out_images']} held-out from the {data['held_out']}"
            + (f", {data['size']}x{data['size']}" if "size" in data else "")
            + ").",
            "",
        ]
        acc = "accuracy" in first
        header = (
            "| pattern | method | mode | layers | rel. error (calibration) | rel. error (held-out) | output drift |"
        )
        header += " accuracy |" if acc else ""
        header += " layers sgpt < wanda < mag | prune s | passes |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in sub:
            cells = [
                r["pattern"],
                r["method"],
                "sequential" if r["sequential"] else "one pass",
                str(r["layers"]),
                f"{r['relative_error_calibration']:.4f}",
                f"{r['relative_error_held_out']:.4f}",
                f"{r['output_drift']:.4f}",
            ]
            if acc:
                cells.append(f"{100 * r['accuracy']:.2f}% (dense {100 * r['dense_accuracy']:.2f}%)")
            cells += [f"{r['layers_ordered']}/{r['layers']}", f"{r['seconds']:.1f}", str(r["forward_passes"])]
            lines.append("| " + " | ".join(cells) + " |")
        dense = sorted({n for r in sub for n in r["left_dense"]})
        if dense:
            lines += ["", f"Left dense under 2:4: {', '.join(dense)}."]
        lines.append("")
    lines += ["Per-layer errors are in `any_model.json`."]
    (out / "any_model.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results/solvers")
    ap.add_argument("--calibration", type=int, default=128, help="calibration images")
    ap.add_argument("--held-out", type=int, default=256, help="held-out images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="resnet18,vit,mnist-cnn")
    ap.add_argument("--note", default="", help="a remark on the run, printed under the protocol")
    ap.add_argument("--report-only", action="store_true", help="rewrite any_model.md from any_model.json")
    args = ap.parse_args()
    if args.report_only:
        stored = json.loads((Path(args.out) / "any_model.json").read_text())
        write(stored["rows"], Path(args.out), stored["protocol"])
        return
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    wanted = args.models.split(",")
    rows: list[dict] = []
    if {"resnet18", "vit"} & set(wanted):
        calib, held, data = fashion_images(args.calibration, args.held_out, 64)
        if "resnet18" in wanted:
            model, weights = resnet18(calib)
            rows += run("resnet18", model, weights, calib, held, None, data, args.batch)
        if "vit" in wanted:
            model, weights = vit()
            rows += run("vit (torchvision VisionTransformer)", model, weights, calib, held, None, data, args.batch)
    if "mnist-cnn" in wanted:
        calib, held, labels, data = mnist_images(args.calibration, max(args.held_out, 2000))
        rows += run(
            "mnist-cnn (ccexam, pretrained)",
            load_ccexam_mnist_cnn(),
            "ccexam's MNIST weights (99.05% on the full test set)",
            calib,
            held,
            labels,
            data,
            args.batch,
        )
    protocol = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPU cores",
        "sparsity": 0.5,
        "load_average_at_start": load,
        "note": args.note,
        "calibration_images": args.calibration,
        "batch": args.batch,
    }
    write(rows, Path(args.out), protocol)
    print((Path(args.out) / "any_model.md").read_text())


if __name__ == "__main__":
    main()
