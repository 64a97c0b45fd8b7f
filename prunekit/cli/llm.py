"""``prunekit prune-llm`` and ``prunekit eval-ppl``: layer-wise pruning of a causal language model with
calibration text, and its perplexity on a real text.

prunekit prune-llm smollm2-135m --method sparsegpt --pattern 2:4 --calibration-samples 32 --out DIR
prunekit eval-ppl DIR --eval-text persuasion --max-tokens 4096
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.allocation.builtin import ALLOCATIONS
from prunekit.cli._common import check_json_out, console, fail, write_json_out
from prunekit.errors import ConfigError, PrunekitError
from prunekit.llm.data import DEFAULT_EVAL_TOKENS
from prunekit.llm.streaming import RECORD
from prunekit.methods.llm import LM_METHOD_NAMES

__all__ = ["RECORD_FILE", "eval_ppl", "prune_llm"]

#: the file in --out that records the source, the settings, the calibration protocol and the perplexities
RECORD_FILE = RECORD  # prunekit_llm.json, beside the pruned model


def _ppl(model: Any, tokenizer: Any, text: str, max_tokens: int, seq_len: int = 512) -> Any:
    from prunekit.datasets import load_text
    from prunekit.llm.data import perplexity

    return perplexity(model, tokenizer, load_text(text), name=text, seq_len=seq_len, max_tokens=max_tokens or None)


def prune_llm(
    model_dir: Annotated[
        str, typer.Argument(help="a save_pretrained dir, an offline name (smollm2-135m, gemma3-270m) or a hub name")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help=f"a registered pruning method (one for language models: {', '.join(LM_METHOD_NAMES)})",
        ),
    ] = "sparsegpt",
    sparsity: Annotated[
        float | None,
        typer.Option(
            "--sparsity",
            "-s",
            help="fraction of weights to remove (in [0, 1); required unless an N:M --pattern fixes it)",
        ),
    ] = None,
    pattern: Annotated[
        str | None, typer.Option(help="what is removed (N:M such as 2:4 or 4:8; default: unstructured)")
    ] = None,
    allocation: Annotated[
        str | None,
        typer.Option(
            help=f"how the sparsity is spread over the layers (over the matrices: {', '.join(ALLOCATIONS.names())}; "
            "default: the method's, uniform; owl for owl-*; N:M takes uniform only)"
        ),
    ] = None,
    calibration_text: Annotated[
        str,
        typer.Option(help="text to calibrate on (`prunekit data list`: an Austen novel, mobydick)"),
    ] = "prideprejudice",
    calibration_samples: Annotated[int, typer.Option("--calibration-samples", "-n", help="calibration windows")] = 32,
    seq_len: Annotated[int, typer.Option(help="tokens per window (of the calibration text)")] = 512,
    seed: Annotated[int, typer.Option(help="random seed (of the calibration draw)")] = 0,
    eval_text: Annotated[
        str, typer.Option(help="text the perplexity is measured on (before and after)")
    ] = "persuasion",
    eval_tokens: Annotated[
        int, typer.Option(help="tokens of --eval-text to evaluate (0: skip the evaluation)")
    ] = DEFAULT_EVAL_TOKENS,
    device: Annotated[
        str | None, typer.Option(help="device to compute on (each layer in turn, e.g. cuda; default: the model's)")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output directory (the pruned model, save_pretrained)")
    ] = Path("pruned-llm"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing output (here a non-empty --out)")] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="show a progress bar (default: on a terminal)")
    ] = None,
    true_sequential: Annotated[
        bool | None,
        typer.Option(
            "--true-sequential/--two-pass",
            help="wanda / sparsegpt and their owl- aliases: calibrate each matrix on inputs computed "
            "with the matrices before it in its layer already pruned, one forward per layer (default), or all of "
            "a layer's matrices on the dense layer's inputs (Wanda's and llm-compressor's order; "
            "true_sequential=False in Python)",
        ),
    ] = None,
    merge_mib: Annotated[
        float | None,
        typer.Option(
            help="wanda / sparsegpt, either order: merge equal-length calibration windows into batches whose "
            "layer forward is estimated at most this many MiB (default 32; 0 never merges)",
        ),
    ] = None,
    spill_activations: Annotated[
        bool | None,
        typer.Option(
            "--spill-activations/--keep-activations",
            help="wanda / sparsegpt, true-sequential: keep the inputs the passes wait with (all but each layer's "
            "own input) in a temporary file (default; read back exactly) or in memory",
        ),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream/--no-stream",
            help="read and write the checkpoint one decoder layer at a time, never holding the whole model (for "
            "models larger than memory; like prunekit.llm.prune_checkpoint; magnitude, wanda, sparsegpt and their "
            "owl- aliases; needs --eval-tokens 0)",
        ),
    ] = False,
) -> None:
    """Prune a causal LM layer by layer with calibration data, report its perplexity before and after, and
    save it with save_pretrained (written to a temporary folder, renamed into --out only when complete)."""
    try:
        import prunekit
        from prunekit.allocation.builtin import Uniform, resolve_allocation
        from prunekit.datasets import load_text
        from prunekit.granularity.patterns import NM, check_sparsity, parse_pattern
        from prunekit.llm.data import calibration_batches
        from prunekit.llm.models import load_causal_lm
        from prunekit.serialization import atomic_directory, check_output_directory

        gran = parse_pattern(pattern)
        if sparsity is None:
            if not isinstance(gran, NM):
                raise prunekit.InvalidSparsityError("pass --sparsity (a fraction in [0, 1)) or an N:M --pattern")
            sparsity = gran.fixed_sparsity
        # everything that can be checked without the model is checked before it is loaded and evaluated
        check_sparsity(sparsity)
        if isinstance(gran, NM):
            gran.check_sparsity(sparsity, spelled="--sparsity ")
            sparsity = gran.fixed_sparsity
        if calibration_samples < 1 or seq_len < 1:
            raise prunekit.DataError(
                f"calibration needs --calibration-samples and --seq-len of at least 1, got {calibration_samples} "
                f"and {seq_len}"
            )
        if eval_tokens < 0:
            raise prunekit.ConfigError(f"--eval-tokens takes a count >= 0 (0 skips the evaluation), got {eval_tokens}")
        check_output_directory(out, overwrite=overwrite)
        base = method[4:] if method.startswith("owl-") else method
        order = {
            k: v
            for k, v in (
                ("true_sequential", true_sequential),
                ("merge_mib", merge_mib),
                ("spill_activations", spill_activations),
            )
            if v is not None
        }
        if merge_mib is not None and not merge_mib >= 0:
            raise prunekit.ConfigError(f"--merge-mib takes a number of MiB >= 0 (0: never merge), got {merge_mib}")
        if true_sequential is False and spill_activations is not None:
            flag = "--spill-activations" if spill_activations else "--keep-activations"
            raise prunekit.ConfigError(
                f"{flag} sets the true-sequential passes; with --two-pass every matrix of a layer is calibrated in "
                "one statistics pass: leave it out"
            )
        prunekit.methods.base.resolve_method(method)  # an unknown name fails first, with the known ones
        if order and base not in ("wanda", "sparsegpt"):
            raise prunekit.ConfigError(
                f"--true-sequential / --two-pass, --merge-mib and --spill-activations / --keep-activations set the "
                f"calibration passes of wanda and sparsegpt (and owl-wanda, owl-sparsegpt); {method!r} takes none"
            )
        if stream:
            _prune_streaming(
                model_dir, method, sparsity, pattern, allocation, calibration_text, calibration_samples, seq_len,
                seed, eval_tokens, device, out, overwrite, progress, order,
            )  # fmt: skip
            return
        # an unknown name, or N:M under a non-uniform allocation, fails before the model is loaded
        chosen = prunekit.methods.base.resolve_method(method)
        if chosen.structural and method not in LM_METHOD_NAMES:
            structured = [n for n in LM_METHOD_NAMES if prunekit.methods.base.resolve_method(n).structural]
            raise prunekit.ConfigError(
                f"{method} removes structure found by tracing a model from example inputs, which prune-llm does "
                f"not take; for a language model use {', '.join(structured)} (or prune it in Python: "
                f"prunekit.prune(model, {method!r}, ..., example_inputs=token_ids))"
            )
        alloc = resolve_allocation(allocation if allocation is not None else chosen.default_allocation)
        if isinstance(gran, NM) and not isinstance(alloc, Uniform):
            raise prunekit.ConfigError(
                f"pattern {gran} fixes every matrix's sparsity; {method} with allocation {alloc} cannot honour it "
                "(pass --allocation uniform with a method that allows it, or an unstructured --sparsity)"
            )
        calibration_corpus = load_text(calibration_text)
        if eval_tokens:
            load_text(eval_text)  # an unknown --eval-text fails before the model is loaded
        model, tokenizer = load_causal_lm(model_dir)
        cal = calibration_batches(
            tokenizer,
            [(calibration_text, calibration_corpus)],
            n_samples=calibration_samples,
            seq_len=seq_len,
            seed=seed,
        )
        before = _ppl(model, tokenizer, eval_text, eval_tokens) if eval_tokens else None
        if before is not None:
            console.print(f"dense:  {before}", highlight=False)
        options: dict[str, Any] = {"measure": False}
        if "progress" in chosen.options:  # methods without a layer loop (magnitude, l2-channel) take none
            options["progress"] = progress
        if device:
            options["device"] = device
        options.update(order)
        params_before = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        report = prunekit.prune(
            model, method, sparsity=sparsity, pattern=pattern, allocation=allocation, calibration=cal, **options
        )
        seconds = time.perf_counter() - t0
        prunekit.squash_masks_(model)
        after = _ppl(model, tokenizer, eval_text, eval_tokens) if eval_tokens else None
        if after is not None:
            console.print(f"pruned: {after}", highlight=False)
        record = {
            "source": model_dir,
            "method": method,
            "sparsity": sparsity,
            "pattern": str(gran),
            "allocation": report.settings["allocation"],
            "calibration": cal.protocol,
            **_pass_record(base, order),
            "prune_seconds": seconds,
            "params_before": params_before,
            "params_after": sum(p.numel() for p in model.parameters()),
            "nonzero_after": sum(int((p != 0).sum()) for p in model.parameters()),
            "perplexity_before": None if before is None else {"ppl": before.ppl, "protocol": before.protocol},
            "perplexity_after": None if after is None else {"ppl": after.ppl, "protocol": after.protocol},
            "notes": report.notes,
        }
        with atomic_directory(out, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        console.print(
            f"pruned with {method} ({'structured' if chosen.structural else gran}, {record['allocation']} "
            f"allocation, sparsity {sparsity:g}"
            f"{', ' + record['calibration_order'] + ' order' if record['calibration_order'] else ''}) "
            f"in {seconds:.1f} s; "
            f"parameters {record['params_before']:,} -> {record['params_after']:,}, "
            f"non-zero {record['nonzero_after']:,}; saved to {out}",
            highlight=False,
        )
        for note in report.notes[:5]:
            console.print(f"  {note}", highlight=False)
    except PrunekitError as e:
        fail(e)


def _pass_record(base: str, order: dict[str, Any]) -> dict[str, Any]:
    """The calibration-pass settings a run used, for its record: the order (``true-sequential`` or
    ``two-pass``; None for a method without calibration passes) and, in true-sequential order, ``merge_mib``
    and ``spill_activations`` with their defaults filled in."""
    from prunekit.llm.sequential import resolve_pass_options

    if base not in ("wanda", "sparsegpt"):
        return {"calibration_order": None}
    keys = ("true_sequential", "merge_mib", "spill_activations")
    sequential, merge_mib, spill, _ = resolve_pass_options(base, None, None, *(order.get(k) for k in keys))
    if not sequential:
        return {"calibration_order": "two-pass"}
    return {"calibration_order": "true-sequential", "merge_mib": merge_mib, "spill_activations": spill}


def _prune_streaming(
    model_dir: str,
    method: str,
    sparsity: float,
    pattern: str | None,
    allocation: str | None,
    calibration_text: str,
    calibration_samples: int,
    seq_len: int,
    seed: int,
    eval_tokens: int,
    device: str | None,
    out: Path,
    overwrite: bool,
    progress: bool | None,
    order: dict[str, Any] | None = None,
) -> None:
    """``prune-llm --stream``: :func:`prunekit.llm.prune_checkpoint` from the checkpoint folder into --out."""
    import prunekit
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches
    from prunekit.llm.models import OFFLINE_MODELS, cached_model_dir
    from prunekit.llm.streaming import STREAMING_METHODS, prune_checkpoint

    if method not in STREAMING_METHODS and not (method.startswith("owl-") and method[4:] in STREAMING_METHODS):
        raise prunekit.ConfigError(
            f"--stream prunes with the layer-wise methods {', '.join(STREAMING_METHODS)} (and their owl- aliases); "
            f"{method!r} is not one of them: drop --stream"
        )
    if eval_tokens:
        raise prunekit.ConfigError(
            "--stream never holds the whole model, so it measures no perplexity: pass --eval-tokens 0 (and run "
            "`prunekit eval-ppl OUT` afterwards if the model fits in memory)"
        )
    if device:
        from prunekit.calls import check_device

        check_device(device)  # before the checkpoint and its tokenizer are read
    source = cached_model_dir(model_dir) if model_dir in OFFLINE_MODELS else Path(model_dir)
    if model_dir in OFFLINE_MODELS and not source.is_dir():
        from prunekit.llm.models import load_causal_lm

        load_causal_lm(model_dir)  # converts the offline package's GGUF into that folder once
    if not (source / "config.json").is_file():
        raise prunekit.CheckpointError(
            f"--stream reads a checkpoint folder (config.json and safetensors); {model_dir} is not one"
        )
    from prunekit.llm.streaming import checkpoint_tensors

    checkpoint_tensors(source)  # a folder without safetensors weights is refused before anything else
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise prunekit.CheckpointError(
            f"{source} has no tokenizer the calibration text can be tokenized with ({type(e).__name__}); save the "
            "model's tokenizer into it (tokenizer.save_pretrained(folder))"
        ) from None
    cal = calibration_batches(
        tokenizer,
        [(calibration_text, load_text(calibration_text))],
        n_samples=calibration_samples,
        seq_len=seq_len,
        seed=seed,
    )
    record = {
        "source": model_dir,
        "method": method,
        "sparsity": sparsity,
        "calibration": cal.protocol,
        **_pass_record(method[4:] if method.startswith("owl-") else method, order or {}),
    }
    t0 = time.perf_counter()
    result = prune_checkpoint(
        source,
        out,
        method,
        sparsity=sparsity,
        pattern=pattern,
        calibration=cal,
        allocation=allocation or "uniform",  # an owl- alias brings its own allocation
        overwrite=overwrite,
        progress=progress,
        record=record,  # written inside --out before it takes its place
        device=device,
        **(order or {}),
    )
    seconds = time.perf_counter() - t0
    console.print(
        f"pruned with {method} ({result.pattern}, {result.allocation} allocation, sparsity {sparsity:g}"
        f"{', ' + record['calibration_order'] + ' order' if record['calibration_order'] else ''}) in "
        f"{seconds:.1f} s, one decoder layer at a time; saved to {out}",
        highlight=False,
    )


def eval_ppl(
    model_dir: Annotated[str, typer.Argument(help="a save_pretrained dir, an offline name or a hub name")],
    text: Annotated[
        str,
        typer.Option(
            "--eval-text", help="text the perplexity is measured on (`prunekit data list`: an Austen novel, mobydick)"
        ),
    ] = "persuasion",
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 512,
    stride: Annotated[int | None, typer.Option(help="window step (default: seq_len, disjoint windows)")] = None,
    max_tokens: Annotated[
        int, typer.Option(help="evaluate the first N tokens of --eval-text (0: the whole text)")
    ] = DEFAULT_EVAL_TOKENS,
    device: Annotated[str | None, typer.Option(help="device to compute on (e.g. cuda)")] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json-out",
            help="write the result as JSON to this file (with its protocol; an existing file is refused unless "
            "--overwrite)",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output (here the --json-out file)")] = False,
) -> None:
    """Perplexity of a causal LM on a real text, with the protocol (text hash, tokenizer, windows) recorded."""
    try:
        from prunekit.datasets import load_text
        from prunekit.llm.data import perplexity
        from prunekit.llm.models import load_causal_lm

        if seq_len < 1 or (stride is not None and stride < 1) or max_tokens < 0:
            raise ConfigError(
                f"--seq-len and --stride take counts >= 1 and --max-tokens a count >= 0 (0: the whole text), got "
                f"{seq_len}, {stride} and {max_tokens}"
            )
        check_json_out(json_out, overwrite=overwrite)  # before the work
        eval_text = load_text(text)  # an unknown --eval-text fails before the model is loaded
        model, tokenizer = load_causal_lm(model_dir)
        if device:
            model.to(device)
        result = perplexity(
            model,
            tokenizer,
            eval_text,
            name=text,
            seq_len=seq_len,
            stride=stride,
            max_tokens=max_tokens or None,
            device=device,
        )
        payload = {"model": model_dir, "ppl": result.ppl, "nll": result.nll, "protocol": result.protocol}
        console.print(str(result), highlight=False)
        if json_out is not None:
            write_json_out(json_out, payload, overwrite=overwrite)
    except PrunekitError as e:
        fail(e)
