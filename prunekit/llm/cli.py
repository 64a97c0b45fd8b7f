"""Command functions for language models, mounted by the main CLI as ``prune-llm`` and ``eval-ppl``.

prunekit prune-llm smollm2-135m --method sparsegpt --sparsity 0.5 --pattern 2:4 --calibration 32 --out DIR
prunekit eval-ppl DIR --text persuasion --max-tokens 8192
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from prunekit.cli_bench import _fail
from prunekit.errors import PrunekitError

console = Console()
err_console = Console(stderr=True)

RECORD_FILE = "prunekit_llm.json"




def prune_llm(
    model_dir: Annotated[
        str, typer.Argument(help="a save_pretrained dir, an offline name (smollm2-135m, gemma3-270m) or a hub name")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="magnitude, wanda, sparsegpt, owl-wanda, owl-sparsegpt, llm-heads, llm-mlp, llm-layers",
        ),
    ] = "sparsegpt",
    sparsity: Annotated[
        Optional[float], typer.Option("--sparsity", "-s", help="fraction to remove (fixed by --pattern for N:M)")
    ] = None,
    pattern: Annotated[
        Optional[str], typer.Option(help="N:M pattern such as 2:4 or 4:8 (default: unstructured)")
    ] = None,
    calibration: Annotated[int, typer.Option("--calibration", "-n", help="number of calibration windows")] = 32,
    seq_len: Annotated[int, typer.Option(help="tokens per calibration window")] = 512,
    calib_text: Annotated[
        str, typer.Option(help="text to calibrate on (prunekit.sources.load_text name)")
    ] = "prideprejudice",
    seed: Annotated[int, typer.Option(help="seed of the calibration draw")] = 0,
    device: Annotated[
        Optional[str], typer.Option(help="where each layer is computed, e.g. cuda (default: the model's)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the pruned model (save_pretrained)")] = Path(
        "pruned-llm"
    ),
) -> None:
    """Prune a causal LM layer by layer with calibration data and save it with save_pretrained."""
    try:
        import prunekit
        from prunekit.granularity import NM, parse_pattern
        from prunekit.llm import methods as _methods  # noqa: F401  (registers the LLM methods)
        from prunekit.llm.data import calibration_batches
        from prunekit.llm.models import load_causal_lm
        from prunekit.sources import load_text

        gran = parse_pattern(pattern)
        if sparsity is None:
            if not isinstance(gran, NM):
                raise prunekit.InvalidSparsityError("pass --sparsity (a fraction in [0, 1)) or an N:M --pattern")
            sparsity = gran.fixed_sparsity
        model, tokenizer = load_causal_lm(model_dir)
        cal = calibration_batches(
            tokenizer, [(calib_text, load_text(calib_text))], n_samples=calibration, seq_len=seq_len, seed=seed
        )
        options: dict[str, Any] = {"progress": True}
        if device:
            options["device"] = device
        report = prunekit.prune(model, method, sparsity=sparsity, pattern=pattern, calibration=cal.batches, **options)
        prunekit.squash_masks_(model)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record = {
            "source": model_dir,
            "method": method,
            "sparsity": sparsity,
            "pattern": str(gran),
            "calibration": cal.protocol,
            "params_after": sum(p.numel() for p in model.parameters()),
            "nonzero_after": sum(int((p != 0).sum()) for p in model.parameters()),
            "notes": report.notes,
        }
        (out / RECORD_FILE).write_text(json.dumps(record, indent=2))
        console.print(f"pruned with {method} ({gran}, sparsity {sparsity:g}); saved to {out}")
        for note in report.notes[:5]:
            console.print(f"  {note}", highlight=False)
    except PrunekitError as e:
        _fail(e)


def eval_ppl(
    model_dir: Annotated[str, typer.Argument(help="a save_pretrained dir, an offline name or a hub name")],
    text: Annotated[str, typer.Option(help="evaluation text (prunekit.sources.load_text name)")] = "persuasion",
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 512,
    stride: Annotated[Optional[int], typer.Option(help="window step (default: seq_len, disjoint windows)")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="evaluate the first N tokens of the text")] = 8192,
    device: Annotated[Optional[str], typer.Option(help="e.g. cuda")] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="also write the result and its protocol here")
    ] = None,
) -> None:
    """Perplexity of a causal LM on a real text, with the protocol (text hash, tokenizer, windows) recorded."""
    try:
        from prunekit.llm.data import perplexity
        from prunekit.llm.models import load_causal_lm
        from prunekit.sources import load_text

        model, tokenizer = load_causal_lm(model_dir)
        if device:
            model.to(device)
        result = perplexity(
            model,
            tokenizer,
            load_text(text),
            name=text,
            seq_len=seq_len,
            stride=stride,
            max_tokens=max_tokens,
            device=device,
        )
        payload = {"model": model_dir, "ppl": result.ppl, "nll": result.nll, "protocol": result.protocol}
        console.print(
            f"perplexity {result.ppl:.3f} on {text} ({result.tokens} predicted tokens, "
            f"seq_len {seq_len}, stride {stride or seq_len})"
        )
        if json_out is not None:
            json_out.write_text(json.dumps(payload, indent=2))
    except PrunekitError as e:
        _fail(e)
