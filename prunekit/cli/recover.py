"""``prunekit recover``: recovery fine-tuning of a saved pruned causal LM (mirrors :func:`prunekit.llm.recover`).

prunekit recover pruned-llm --train-text prideprejudice --train-text mansfieldpark --steps 200 --out recovered-llm
prunekit recover pruned-llm --recovery-method kd --teacher smollm2-135m --train-text northangerabbey --out recovered-llm
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import console, fail
from prunekit.errors import PrunekitError

__all__ = ["RECORD_FILE", "recover"]

#: the file in --out that records the source, the texts, the settings and the perplexities of a recovery
RECORD_FILE = "prunekit_recovery.json"


def recover(
    model_dir: Annotated[
        str, typer.Argument(help="a folder written by `prunekit prune-llm --out` / save_pretrained, or a model name")
    ],
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--train-text", "-t", help="text to train on (repeatable; `prunekit data list`: an Austen novel, mobydick)"
        ),
    ] = None,
    method: Annotated[
        str, typer.Option("--recovery-method", help="how to recover: lora (cross-entropy) or kd (distillation)")
    ] = "lora",
    teacher: Annotated[
        str | None, typer.Option(help="the dense model for --recovery-method kd (a folder or an offline name)")
    ] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 200,
    batch_size: Annotated[int, typer.Option(help="inputs per batch (windows per optimizer step)")] = 4,
    seq_len: Annotated[int, typer.Option(help="tokens per window (of the training texts)")] = 256,
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
        str | None, typer.Option(help="text the perplexity is measured on (before and after, e.g. persuasion)")
    ] = None,
    eval_tokens: Annotated[int, typer.Option(help="tokens of --eval-text to evaluate")] = 4096,
    seed: Annotated[int, typer.Option(help="random seed (of the window draw and of LoRA's initialisation)")] = 0,
    device: Annotated[
        str | None, typer.Option(help="device to compute on (to train on, e.g. cuda; default: cpu)")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output directory (the recovered model, save_pretrained)")
    ] = Path("recovered-llm"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing output (here a non-empty --out)")] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="show a progress bar (default: on a terminal)")
    ] = None,
) -> None:
    """Fine-tune a pruned causal LM through LoRA (or distil it from --teacher), merge the adapters so the
    model keeps its pruned shapes and zeros, and save it (written to a temporary folder, renamed into --out
    only when complete)."""
    try:
        from prunekit.datasets import load_text
        from prunekit.errors import ConfigError, MissingDataError, UnknownNameError
        from prunekit.llm.models import load_causal_lm
        from prunekit.llm.recover import RECOVERY_METHODS
        from prunekit.serialization import atomic_directory, check_output_directory

        if not text:
            raise MissingDataError("pass at least one --train-text to train on (e.g. --train-text prideprejudice)")
        if method not in RECOVERY_METHODS:
            raise UnknownNameError("recovery method", method, RECOVERY_METHODS)
        if method == "kd" and teacher is None:
            raise MissingDataError(
                "--recovery-method kd distils from a teacher: pass --teacher <dense model folder or name>"
            )
        if method == "lora" and teacher is not None:
            raise ConfigError(
                "--teacher is used by --recovery-method kd only; pass --recovery-method kd or leave --teacher out"
            )
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
        record = {
            "source": model_dir,
            "teacher": teacher,
            "texts": text,
            "seconds": time.perf_counter() - t0,
            **report.to_dict(),
        }
        if device:
            model.to("cpu")
        with atomic_directory(out, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        console.print(f"{report}; saved to {out}", highlight=False)
    except PrunekitError as e:
        fail(e)
