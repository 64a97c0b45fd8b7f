"""``prunekit recover``: recovery fine-tuning of a saved pruned causal LM (mirrors :func:`prunekit.llm.recover`).

prunekit recover pruned-llm --text prideprejudice --text mansfieldpark --steps 200 --out recovered-llm
prunekit recover pruned-llm --method kd --teacher smollm2-135m --text northangerabbey --out recovered-llm
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from prunekit.cli_bench import _fail
from prunekit.errors import PrunekitError

console = Console()

RECORD_FILE = "prunekit_recovery.json"


def recover(
    model_dir: Annotated[
        str, typer.Argument(help="a folder written by `prunekit prune-llm --out` / save_pretrained, or a model name")
    ],
    text: Annotated[
        Optional[list[str]],
        typer.Option("--text", "-t", help="text(s) to train on, repeatable (`prunekit data list`: Austen, mobydick)"),
    ] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="lora (cross-entropy) or kd (distillation)")] = "lora",
    teacher: Annotated[
        Optional[str], typer.Option(help="the dense model for --method kd (a folder or an offline name)")
    ] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 200,
    batch_size: Annotated[int, typer.Option(help="windows per step")] = 4,
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 256,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (warmup 10%, then linear decay)")] = 3e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank r")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha / r)")] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="dropout on the LoRA input")] = 0.0,
    temperature: Annotated[float, typer.Option(help="distillation temperature (kd)")] = 2.0,
    kd_alpha: Annotated[float, typer.Option(help="weight of the KD loss against cross-entropy (kd)")] = 1.0,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="trade time for memory")
    ] = False,
    eval_text: Annotated[
        Optional[str], typer.Option(help="text whose perplexity is reported before and after (e.g. persuasion)")
    ] = None,
    eval_tokens: Annotated[int, typer.Option(help="tokens of --eval-text to evaluate")] = 4096,
    seed: Annotated[int, typer.Option(help="seed of the window draw and of LoRA's initialisation")] = 0,
    device: Annotated[Optional[str], typer.Option(help="where to train, e.g. cuda (default: cpu)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the recovered model (save_pretrained)")] = Path(
        "recovered-llm"
    ),
    overwrite: Annotated[bool, typer.Option(help="replace --out if it is not empty")] = False,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="progress bar (default: on a terminal)")
    ] = None,
) -> None:
    """Fine-tune a pruned causal LM through LoRA (or distil it from --teacher), merge the adapters so the
    model keeps its pruned shapes and zeros, and save it (written to a temporary folder, renamed into --out
    only when complete)."""
    try:
        from prunekit.errors import ConfigError, MissingDataError, UnknownNameError
        from prunekit.llm.models import load_causal_lm
        from prunekit.llm.recover import RECOVERY_METHODS
        from prunekit.serialization import atomic_directory, check_output_directory
        from prunekit.datasets import load_text

        if not text:
            raise MissingDataError("pass at least one --text to train on (e.g. --text prideprejudice)")
        if method not in RECOVERY_METHODS:
            raise UnknownNameError("recovery method", method, RECOVERY_METHODS)
        if method == "kd" and teacher is None:
            raise MissingDataError("--method kd distils from a teacher: pass --teacher <dense model folder or name>")
        if method == "lora" and teacher is not None:
            raise ConfigError("--teacher is used by --method kd only; pass --method kd or leave --teacher out")
        if eval_tokens < 2:
            raise ConfigError(f"--eval-tokens takes a count >= 2, got {eval_tokens}")
        check_output_directory(out, overwrite=overwrite)
        texts = [(name, load_text(name)) for name in text]  # unknown names fail before the model is loaded
        evaluation = load_text(eval_text) if eval_text else None
        model, tokenizer = load_causal_lm(model_dir)
        teacher_model = load_causal_lm(teacher)[0] if teacher is not None else None
        if device:
            model.to(device)
            if teacher_model is not None:
                teacher_model.to(device)
        from prunekit.llm.recover import recover as _recover

        t0 = time.perf_counter()
        report = _recover(
            model,
            texts,
            method,
            tokenizer=tokenizer,
            teacher=teacher_model,
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            rank=rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            temperature=temperature,
            kd_alpha=kd_alpha,
            gradient_checkpointing=gradient_checkpointing,
            eval_text=evaluation,
            eval_name=eval_text or "eval",
            eval_tokens=eval_tokens,
            seed=seed,
            progress=progress,
        )
        record = {"source": model_dir, "teacher": teacher, "texts": text, "seconds": time.perf_counter() - t0,
                  **report.to_dict()}
        if device:
            model.to("cpu")
        with atomic_directory(out, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        console.print(f"{report}; saved to {out}", highlight=False)
    except PrunekitError as e:
        _fail(e)
