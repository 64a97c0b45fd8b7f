"""``prunekit dynamic``: run-time pruning from the command line, mirroring :mod:`prunekit.dynamic`.

    prunekit dynamic merge-tokens minilm --ratio 0.1          # merge_tokens_(model, ratio=0.1)
    prunekit dynamic merge-tokens torchvision:vit_b_16 --r 8  # merge_tokens_(model, r=8)
    prunekit dynamic prune-tokens minilm --keep-rate 0.7      # prune_tokens_(model, keep_rate=0.7)
    prunekit dynamic skip-layers smollm2-135m --fraction 0.2  # skip_layers_(model, calibration, fraction=0.2)

A patch lives only in memory (the weights do not change), so each command patches the model, runs it on
real inputs next to the dense model and prints what was skipped and what it cost: tokens per block, the
similarity of the outputs to the dense ones, the latency ratio (interleaved rounds, one thread) or the
perplexity, and writes the same as JSON with ``--json-out`` (checked before the work: an existing file is
refused unless ``--overwrite``; written whole or not at all).

For an image model the features entering its classification layer are compared too, and a model with random
weights (no pretrained weights in the local cache) is named as such. A cosine similarity is undefined where an
output is all zero (a random-init torchvision ViT's class scores are: its classification layer starts at
zero); it is reported as undefined, never as a number. Refusals name the command's flags (``--keep-rate``),
not the Python parameters of :mod:`prunekit.dynamic` (``keep_rate``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.cli._common import check_json_out, console, err_console, fail, write_json_out
from prunekit.errors import PrunekitError

# the commands register themselves on the typer application on import; only these names are imported elsewhere
__all__ = ["app"]

#: the ``prunekit dynamic`` command group
app = typer.Typer(help="Run-time (dynamic) pruning: token merging / pruning, dynamic depth.", no_args_is_help=True)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    from prunekit.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated integers like 3,6,9, got {text!r}") from None


def _token_inputs(spec: str, inputs: int, batch_size: int, text: str, seed: int) -> tuple[Any, list, str]:
    """(model, batches of keyword inputs, kind) for a token-reduction command."""
    import torch

    from prunekit.errors import ConfigError

    if spec == "minilm" or (Path(spec).is_dir() and (Path(spec) / "tokenizer_config.json").is_file()):
        from transformers import AutoModel, AutoTokenizer

        from prunekit.dynamic.inputs import austen_sentences, load_minilm

        model, tok = (
            load_minilm()
            if spec == "minilm"
            else (AutoModel.from_pretrained(spec).eval(), AutoTokenizer.from_pretrained(spec))
        )
        sents = austen_sentences(inputs, novel=text)
        batches = [
            dict(tok(sents[i : i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"))
            for i in range(0, len(sents), batch_size)
        ]
        return model, batches, "text"
    if spec.startswith(("torchvision:", "timm:")):
        import prunekit as pk
        from prunekit.models import input_shape_of

        model = pk.build_model(spec).eval()
        shape = input_shape_of(model) or (1, 3, 224, 224)
        g = torch.Generator().manual_seed(seed)
        n_batches = max(1, inputs // batch_size)
        images = [{"x": torch.randn(batch_size, *shape[1:], generator=g)} for _ in range(n_batches)]
        return model, images, "image"
    raise ConfigError(
        f"model {spec!r}: token commands take minilm, a sentence-encoder folder (with its tokenizer), "
        "torchvision:NAME or timm:NAME (a vision transformer, e.g. torchvision:vit_b_16, timm:deit_small_patch16_224)"
    )


def _classifier(model: Any) -> tuple[str, Any] | None:
    """(name, module) of the model's last ``nn.Linear`` (a vision transformer's classification layer), if any."""
    from torch import nn

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def _outputs(model: Any, batches: list, kind: str, features: bool = False) -> tuple[Any, Any]:
    """The model's outputs ``(N, ...)`` on ``batches`` (sentence embeddings for text, class scores for images)
    and, with ``features`` for an image model, the features entering its classification layer ``(N, D)``
    (None when that layer's output is not the model's output, or for text)."""
    import torch

    from prunekit.dynamic.inputs import encode

    with torch.no_grad():
        if kind == "text":
            return encode(model, batches), None
        head = _classifier(model) if features else None
        if head is None:
            return torch.cat([model(b["x"]) for b in batches]), None
        seen: dict[str, Any] = {}
        handle = head[1].register_forward_hook(lambda _m, args, out: seen.update(x=args[0], y=out))
        outs, feats = [], []
        try:
            for b in batches:
                outs.append(model(b["x"]))
                if seen.get("y") is outs[-1]:  # the layer's output is the model's output: a classification layer
                    feats.append(seen["x"].flatten(1))
        finally:
            handle.remove()
        return torch.cat(outs), (torch.cat(feats) if len(feats) == len(outs) else None)


def _cosine(patched: Any, dense: Any, of: str) -> dict[str, Any]:
    """Cosine similarity of each input's patched output to its dense output (``(N, ...)`` each, flattened per
    input): mean and min over the inputs where it is defined. A zero vector has no direction, so an input whose
    dense or patched output is all zero is left out and counted (``undefined_inputs``, with the ``reason``);
    mean and min are None when no input has a defined cosine (never a made-up 0)."""
    a, b = patched.flatten(1).double(), dense.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    res: dict[str, Any] = {"of": of, "mean": None, "min": None, "undefined_inputs": int((~ok).sum())}
    if bool(ok.any()):
        cos = (a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])
        res.update(mean=float(cos.mean()), min=float(cos.min()))
    if not bool(ok.all()):
        zero = [(w, int((n == 0).sum())) for w, n in (("dense", nb), ("patched", na))]
        res["reason"] = " and ".join(f"the {w} {of} are all zero for {k} of {len(ok)} inputs" for w, k in zero if k)
    return res


def _say_cosine(c: dict[str, Any], note: str = "") -> None:
    if c["mean"] is None:
        console.print(
            f"cosine to dense {c['of']}: undefined: {c['reason']} (a zero vector has no direction{note})",
            highlight=False,
        )
        return
    left_out = f" (left out: {c['reason']})" if c["undefined_inputs"] else ""
    console.print(f"cosine to dense {c['of']}: mean {c['mean']:.4f}, min {c['min']:.4f}{left_out}", highlight=False)


def _run_tokens(
    spec: str,
    apply: Any,
    settings: dict,
    inputs: int,
    batch_size: int,
    text: str,
    rounds: int,
    seed: int,
    out: Path | None,
    overwrite: bool,
) -> None:
    check_json_out(out, overwrite=overwrite)  # before the model is loaded
    import torch

    from prunekit import dynamic
    from prunekit.models import is_pretrained

    torch.set_num_threads(1)
    model, batches, kind = _token_inputs(spec, inputs, batch_size, text, seed)
    with apply(model):  # the settings are checked (and refused) before the dense pass
        pass
    random_init = is_pretrained(model) is False
    if random_init:
        err_console.print(
            f"note: {spec} has random weights (no pretrained weights in the local torch hub cache): the token "
            "counts and the speed-up are meaningful, the similarity to the dense model says little about a "
            "trained one",
            highlight=False,
        )
    dense, dense_feats = _outputs(model, batches, kind, features=True)
    times: dict[str, list[float]] = {"dense": [], "patched": []}
    with apply(model) as patch:
        reports = []
        patched_out, patched_feats = [], []
        with torch.no_grad():
            for b in batches:
                y, feats = _outputs(model, [b], kind, features=True)
                patched_out.append(y)
                patched_feats.append(feats)
                reports.append(patch.report())
        patched = torch.cat(patched_out)
    for _ in range(rounds):  # interleaved: dense, patched, dense, patched, ...
        for name in ("dense", "patched"):
            p = apply(model) if name == "patched" else None
            t0 = time.perf_counter()
            _outputs(model, batches, kind)
            times[name].append(time.perf_counter() - t0)
            if p is not None:
                dynamic.restore_(model)
    import statistics

    cos = _cosine(patched, dense, "embeddings" if kind == "text" else "outputs")
    head = _classifier(model)
    feats_cos = None
    if dense_feats is not None and head is not None and all(f is not None for f in patched_feats):
        feats_cos = _cosine(torch.cat(patched_feats), dense_feats, f"features entering {head[0]}")
    ratios = sorted(d / p for d, p in zip(times["dense"], times["patched"]))
    kept = sum(sum(r["tokens_per_block"]) for r in reports)
    total = sum(r["blocks"] * r["input_tokens"] for r in reports)
    result: dict[str, Any] = {
        "model": spec,
        "random_init": random_init,
        "settings": settings,
        "inputs": len(dense),
        "batch_size": batch_size,
        "tokens_per_block": [
            statistics.mean(r["tokens_per_block"][i] for r in reports) for i in range(reports[0]["blocks"])
        ],
        "token_share": kept / total if total else None,
        "cosine_to_dense": cos,
        **({"cosine_of_features": feats_cos} if feats_cos is not None else {}),
        "speedup": {
            "median": statistics.median(ratios),
            "min": ratios[0],
            "max": ratios[-1],
            "rounds": rounds,
            "threads": 1,
        },
    }
    console.print(f"[bold]{spec}[/bold] {settings}: {result['inputs']} inputs, batch {batch_size}", highlight=False)
    console.print(
        "tokens entering each block (mean per input): " + ", ".join(f"{v:.1f}" for v in result["tokens_per_block"]),
        highlight=False,
    )
    console.print(f"block-token computations kept: {result['token_share']:.3f}", highlight=False)
    random_vit = random_init and kind == "image"
    zero_head = "; torchvision initialises a ViT's classification layer to zero" if random_vit else ""
    _say_cosine(cos, zero_head)
    if feats_cos is not None:
        _say_cosine(feats_cos)
    console.print(
        f"speed-up vs dense (1 thread, {rounds} interleaved rounds): median {result['speedup']['median']:.2f}x "
        f"[{ratios[0]:.2f}, {ratios[-1]:.2f}]",
        highlight=False,
    )
    if out is not None:
        write_json_out(out, result, overwrite=overwrite)
        console.print(f"written to {out}")


# each command's Python names (in the messages of prunekit.dynamic) and the flags the user typed for them
_MERGE_FLAGS = {
    "merge_tokens_": "prunekit dynamic merge-tokens",
    "r": "--r",
    "ratio": "--ratio",
    "metric": "--metric",
    "protect_cls": "--protect-cls",
    "proportional_attention": "--proportional-attention",
}
_PRUNE_FLAGS = {
    "prune_tokens_": "prunekit dynamic prune-tokens",
    "keep_rate": "--keep-rate",
    "layers": "--layers",
    "proportional_attention": "--proportional-attention",
}
_SKIP_FLAGS = {
    "skip_layers_": "prunekit dynamic skip-layers",
    "fraction": "--fraction",
    "never_skip": "--never-skip",
    "n_samples": "--calibration-samples",
    "seq_len": "--seq-len",
    "max_tokens": "--eval-tokens",
}

_MODEL = Annotated[
    str,
    typer.Argument(
        help="minilm, a sentence-encoder folder, torchvision:vit_b_16 or timm:deit_small_patch16_224 (or another ViT)"
    ),
]
_INPUTS = Annotated[int, typer.Option(help="number of inputs (sentences or random images)", min=1)]
_BATCH = Annotated[int, typer.Option(help="inputs per batch (sentences or images)", min=1)]
_TEXT = Annotated[str, typer.Option(help="Austen novel the sentences come from (text models)")]
_ROUNDS = Annotated[int, typer.Option(help="interleaved timing rounds", min=1)]
_SEED = Annotated[int, typer.Option(help="random seed (of the random images)")]
_JSON_OUT = Annotated[
    Path | None,
    typer.Option(
        "--json-out", help="write the result as JSON to this file (an existing file is refused unless --overwrite)"
    ),
]
_OVERWRITE = Annotated[bool, typer.Option(help="replace an existing output (here the --json-out file)")]


@app.command("merge-tokens")
def merge_tokens(
    model: _MODEL,
    r: Annotated[
        int | None, typer.Option("--r", help="tokens merged per block (like merge_tokens_(model, r=...))")
    ] = None,
    ratio: Annotated[
        float | None, typer.Option(help="share of each input's tokens merged per block, in [0, 0.5]")
    ] = None,
    protect_cls: Annotated[
        bool | None,
        typer.Option(
            "--protect-cls/--no-protect-cls",
            help="keep the leading tokens (class, distillation, register) out of merging (default: yes)",
        ),
    ] = None,
    proportional_attention: Annotated[bool, typer.Option(help="add log(size) to attention scores")] = True,
    metric: Annotated[
        str | None, typer.Option(help="keys or hidden (default: keys for ViTs, hidden for BERT-style)")
    ] = None,
    inputs: _INPUTS = 64,
    batch_size: _BATCH = 32,
    text: _TEXT = "persuasion",
    rounds: _ROUNDS = 3,
    seed: _SEED = 0,
    json_out: _JSON_OUT = None,
    overwrite: _OVERWRITE = False,
) -> None:
    """Token merging (ToMe, Bolya et al. 2023): like prunekit.dynamic.merge_tokens_(model, r=..., ratio=...)."""
    from prunekit import dynamic

    try:

        def apply(m: Any) -> Any:
            return dynamic.merge_tokens_(
                m,
                r=r,
                ratio=ratio,
                protect_cls=protect_cls,
                proportional_attention=proportional_attention,
                metric=metric,
            )

        _run_tokens(
            model,
            apply,
            {"method": "merge_tokens_", "r": r, "ratio": ratio, "metric": metric},
            inputs,
            batch_size,
            text,
            rounds,
            seed,
            json_out,
            overwrite,
        )
    except PrunekitError as e:
        fail(e, _MERGE_FLAGS)


@app.command("prune-tokens")
def prune_tokens(
    model: _MODEL,
    keep_rate: Annotated[float, typer.Option(help="share of tokens kept in each pruning block, in (0, 1]")] = 0.7,
    layers: Annotated[str | None, typer.Option(help="pruning blocks, e.g. 3,6,9 (default: n/4, n/2, 3n/4)")] = None,
    proportional_attention: Annotated[bool, typer.Option(help="add log(size) to attention scores")] = True,
    inputs: _INPUTS = 64,
    batch_size: _BATCH = 32,
    text: _TEXT = "persuasion",
    rounds: _ROUNDS = 3,
    seed: _SEED = 0,
    json_out: _JSON_OUT = None,
    overwrite: _OVERWRITE = False,
) -> None:
    """Attentive token pruning (EViT, Liang et al. 2022): like prunekit.dynamic.prune_tokens_(model, keep_rate=...)."""
    from prunekit import dynamic

    try:
        chosen = _ints(layers, "--layers")

        def apply(m: Any) -> Any:
            return dynamic.prune_tokens_(
                m, keep_rate=keep_rate, layers=chosen, proportional_attention=proportional_attention
            )

        _run_tokens(
            model,
            apply,
            {"method": "prune_tokens_", "keep_rate": keep_rate, "layers": chosen},
            inputs,
            batch_size,
            text,
            rounds,
            seed,
            json_out,
            overwrite,
        )
    except PrunekitError as e:
        fail(e, _PRUNE_FLAGS)


@app.command("skip-layers")
def skip_layers(
    model: Annotated[str, typer.Argument(help="an offline language model (smollm2-135m) or a saved model folder")],
    fraction: Annotated[float, typer.Option(help="share of (token, layer) computations to skip, in [0, 1)")] = 0.2,
    never_skip: Annotated[
        str | None, typer.Option(help="layers always computed, e.g. 0,29 (default: first and last)")
    ] = None,
    calibration_text: Annotated[
        str, typer.Option(help="text to calibrate on (the router is fitted on it)")
    ] = "prideprejudice",
    calibration_samples: Annotated[int, typer.Option(help="calibration windows", min=1)] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per window (of the calibration text)", min=2)] = 256,
    eval_text: Annotated[
        str, typer.Option(help="text the perplexity is measured on (not the calibration text)")
    ] = "persuasion",
    eval_tokens: Annotated[int, typer.Option(help="tokens of --eval-text to evaluate", min=2)] = 2048,
    seed: Annotated[int, typer.Option(help="random seed (of the calibration draw)")] = 0,
    json_out: _JSON_OUT = None,
    overwrite: _OVERWRITE = False,
) -> None:
    """Dynamic depth: like prunekit.dynamic.skip_layers_(model, calibration, fraction=...); prints the
    perplexity before and after and the share of layer computations really skipped."""
    import torch

    from prunekit import dynamic
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches, perplexity
    from prunekit.llm.models import load_causal_lm

    try:
        check_json_out(json_out, overwrite=overwrite)  # before the model is loaded
        torch.set_num_threads(1)
        m, tok = load_causal_lm(model)
        cal = calibration_batches(
            tok,
            [(calibration_text, load_text(calibration_text))],
            n_samples=calibration_samples,
            seq_len=seq_len,
            seed=seed,
        )
        text = load_text(eval_text)
        dense = perplexity(m, tok, text, name=eval_text, max_tokens=eval_tokens)
        skipping = dynamic.skip_layers_(m, cal.batches, fraction=fraction, never_skip=_ints(never_skip, "--never-skip"))
        with skipping:
            skipping.reset_counts()
            after = perplexity(m, tok, text, name=eval_text, max_tokens=eval_tokens)
            rep = skipping.report()
        result = {
            "model": model,
            "fraction": fraction,
            "calibration": cal.protocol,
            "dense_ppl": dense.ppl,
            "ppl": after.ppl,
            "tokens": after.tokens,
            **{k: rep[k] for k in ("skipped_fraction", "skipped_per_layer", "never_skip", "threshold", "router_r2")},
        }
        console.print(f"dense: {dense}", highlight=False)
        console.print(f"skip_layers_(fraction={fraction}): {after}", highlight=False)
        console.print(
            f"layer computations skipped on {eval_text}: {rep['skipped_fraction']:.3f} "
            f"(per layer: {rep['skipped_per_layer']})",
            highlight=False,
        )
        if json_out is not None:
            write_json_out(json_out, result, overwrite=overwrite)
            console.print(f"written to {json_out}")
    except PrunekitError as e:
        fail(e, _SKIP_FLAGS)
