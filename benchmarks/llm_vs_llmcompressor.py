"""Side by side: prunekit against llm-compressor 0.14 (in its own virtual environment) under the issue's protocol.

    .venv/bin/python benchmarks/llm_vs_llmcompressor.py --lc-python /path/to/lc-venv/bin/python [--rounds 1]

The llm-compressor environment: a virtual environment with ``torch==2.14.1`` (the local wheel),
``pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0`` and ``transformers==5.17.0
datasets accelerate loguru pyyaml pydantic psutil pillow nvidia-ml-py requests`` (llm-compressor pins
torch<=2.14.0, hence ``--no-deps``; its AutoRound extra is not needed for Wanda or SparseGPT).

Protocol (the issue's): SmolLM2-135M in float32, 2 threads (``torch.set_num_threads(2)``, ``OMP_NUM_THREADS=2``);
calibration 64 windows of 256 tokens of *Emma* (the book's lines joined with newlines, tokenised without
special tokens), window starts ``torch.randint(0, len(ids) - 256 + 1, (64,), generator=torch.Generator()
.manual_seed(0))``; every Linear inside the decoder layers pruned; perplexity on the first 16,384 tokens of
*Persuasion* in 32 disjoint windows of 512. The parent process tokenises once and hands both tools the same
token ids in a file, and both children compute perplexity with the same plain loop (mean next-token negative
log-likelihood over every window, exponentiated), so only the pruning differs.

* prunekit: ``prunekit.prune(model, method, sparsity=0.5, pattern=..., calibration=windows, progress=False)``
  with its defaults.
* llm-compressor: ``oneshot(model, dataset, recipe=[WandaPruningModifier | SparseGPTModifier(sparsity=0.5,
  mask_structure="0:0" | "2:4", targets=["Linear"], ignore=["re:.*lm_head"])], num_calibration_samples=64,
  max_seq_length=256, shuffle_calibration_samples=False, pipeline="sequential")``.

Every run is a fresh child process. Prune time is the wall time of the pruning call and the child's CPU
time. Peak memory: the peak resident set during the pruning call alone (``VmHWM`` reset through
``/proc/self/clear_refs`` right before it, so the model load's transient does not count; the resident model
and interpreter do), with the resident set just before pruning beside it; a thread also samples the
resident set's anonymous and file-backed parts every 10 ms (``RssAnon``, ``RssFile``), whose peaks go to the
.json.

Same library files (default; ``--no-share-torch`` turns it off): the resident set counts the pages of shared
libraries a process has touched, and how many pages a touch maps depends on how the file sits in the OS
page cache (large folios), not on the program: the same torch 2.14.1 wheel installed twice measured 726 and
522 MiB resident right after ``import torch``. So the llm-compressor child imports torch, triton and the
NVIDIA libraries from prunekit's environment's files (a folder of links put first on its ``PYTHONPATH``),
after checking that both environments hold the same torch and triton versions; everything else, its
transformers included, comes from its own environment. Configurations run in turn; within
a configuration the two tools alternate, the
order flipping every round. Writes ``docs/results/llm/vs_llmcompressor.{md,json}`` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["wanda:unstructured", "sparsegpt:unstructured", "wanda:2:4", "sparsegpt:2:4"]
TOOLS = ("prunekit", "llm-compressor")

_COMMON = r"""
import json, resource, sys, time, torch
threads = int(sys.argv[4])
torch.set_num_threads(threads)
data = torch.load(sys.argv[1])
model_dir, config = sys.argv[2], sys.argv[3]
method, _, pattern = config.partition(":")


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    # peaks of RssAnon and RssFile, sampled every 10 ms on a thread while the pruning call runs

    def __init__(self):
        import threading
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0, "VmRSS": 0.0}
        self.at_peak = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            now = {k: status_mib(k) for k in self.peak}
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            if now["VmRSS"] >= self.peak["VmRSS"]:
                self.at_peak = now
            self._stop.wait(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return {"peak_anon_mib": self.peak["RssAnon"], "peak_file_mib": self.peak["RssFile"],
                "sampled_peak_rss_mib": self.peak["VmRSS"], "at_sampled_peak": self.at_peak}


def reset_peak():
    # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one
    import gc
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def perplexity(model, ids, seq_len):
    nll, count = 0.0, 0
    for s in range(0, len(ids) - seq_len + 1, seq_len):
        x = ids[s : s + seq_len].unsqueeze(0)
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += seq_len - 1
    return float(torch.exp(torch.tensor(nll / count))), count
"""

#: after the pruning call (wall and CPU time started as w, c): peak memory, perplexity, zeros, the record
_TAIL = r"""
out["prune_wall_s"], out["prune_cpu_s"] = time.perf_counter() - w, time.process_time() - c
out["peak_prune_mib"] = status_mib("VmHWM")
out.update(sampler.stop())
if data["eval_ids"].numel():
    out["ppl"], out["predicted_tokens"] = perplexity(model, data["eval_ids"], data["seq_len"])
out["zeros"] = sum(int((m.weight == 0).sum()) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".layers." in n)
print(json.dumps(out))
"""

_PRUNEKIT = (
    _COMMON
    + r"""
import prunekit as pk
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.eval()
out = {"load_peak_mib": rss_mib()}
windows = [w.unsqueeze(0) for w in data["windows"]]
out["rss_before_prune_mib"], out["peak_reset"] = status_mib("VmRSS"), reset_peak()
sampler = RssSampler()
w, c = time.perf_counter(), time.process_time()
if method != "dense":  # "dense": the perplexity of the model as loaded, through the same loop
    pk.prune(model, method, sparsity=0.5, pattern=None if pattern == "unstructured" else pattern,
             calibration=windows, progress=False, **json.loads(sys.argv[5]))
"""
    + _TAIL
)

_LLMCOMPRESSOR = (
    _COMMON
    + r"""
import logging
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.eval()
out = {"load_peak_mib": rss_mib()}
windows = data["windows"]
ds = Dataset.from_dict(
    {"input_ids": [w.tolist() for w in windows], "attention_mask": [[1] * w.numel() for w in windows]}
)
modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
structure = "0:0" if pattern == "unstructured" else pattern
recipe = [modifier(sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])]
out["rss_before_prune_mib"], out["peak_reset"] = status_mib("VmRSS"), reset_peak()
sampler = RssSampler()
w, c = time.perf_counter(), time.process_time()
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(windows),
        max_seq_length=windows[0].numel(), shuffle_calibration_samples=False, pipeline="sequential")
"""
    + _TAIL
)


def prepare(args: argparse.Namespace, path: Path) -> tuple[str, dict]:
    """Tokenise the calibration and evaluation texts once; returns the model folder and the protocol record."""
    import hashlib

    import torch

    from prunekit.datasets import load_text
    from prunekit.llm.models import cached_model_dir

    model_dir = str(cached_model_dir("smollm2-135m"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor(tok(load_text("emma"), add_special_tokens=False)["input_ids"], dtype=torch.long)
    starts = torch.randint(0, len(ids) - 256 + 1, (args.samples,), generator=torch.Generator().manual_seed(0))
    windows = [ids[s : s + 256].clone() for s in starts.tolist()]
    eval_ids = torch.tensor(tok(load_text("persuasion"), add_special_tokens=False)["input_ids"], dtype=torch.long)
    eval_ids = eval_ids[: args.eval_tokens].clone()
    torch.save({"windows": windows, "eval_ids": eval_ids, "seq_len": 512}, path)
    digest = hashlib.sha256(torch.cat(windows).numpy().tobytes()).hexdigest()
    return model_dir, {"calibration_token_sha256": digest, "eval_tokens": int(eval_ids.numel())}


SHARED_PACKAGES = ("torch", "torchgen", "functorch", "triton", "nvidia")


def build_shim(lc_python: str, folder: Path) -> str:
    """A folder of links to this environment's torch, triton and NVIDIA packages, for the llm-compressor
    child's ``PYTHONPATH`` (see the module docstring); refuses environments with other torch or triton
    versions."""
    import importlib.metadata as md

    import torch

    probe = "import importlib.metadata as md; print(md.version('torch'), md.version('triton'))"
    theirs = subprocess.run([lc_python, "-c", probe], capture_output=True, text=True).stdout.split()
    ours = [md.version("torch"), md.version("triton")]
    if theirs != ours:
        raise SystemExit(
            f"--share-torch needs the same torch and triton in both environments: prunekit's {ours}, "
            f"llm-compressor's {theirs or '?'}; install those versions or pass --no-share-torch"
        )
    site = Path(torch.__file__).resolve().parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED_PACKAGES:
        if (site / name).exists():
            (folder / name).symlink_to(site / name, target_is_directory=True)
    return str(folder)


def run_child(tool: str, args: argparse.Namespace, data: Path, model_dir: str, config: str) -> dict:
    python = sys.executable if tool == "prunekit" else args.lc_python
    code = _PRUNEKIT if tool == "prunekit" else _LLMCOMPRESSOR
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(ROOT) if tool == "prunekit" else (args.shim or "")
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", code, str(data), model_dir, config, threads, json.dumps(args.prunekit_options)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tool} {config} failed:\n{proc.stderr[-4000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec.update(tool=tool, config=config, process_s=time.perf_counter() - t, load_before=load0)
    rec["tree"] = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rec["load_after"] = os.getloadavg()[0]
    return rec


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_llmcompressor.json").write_text(json.dumps(result, indent=1) + "\n")
    runs = result["runs"]
    lines = [
        "# prunekit against llm-compressor 0.14: Wanda and SparseGPT on SmolLM2-135M, side by side",
        "",
        f"Protocol: {result['protocol']}",
        "",
        f"Machine: {result['machine']}; {result['versions']}. Each run is a fresh process; the two tools "
        "alternate within each configuration (order flipped every round). Prune time: wall (CPU) seconds of the "
        "pruning call; peak: the peak resident set during the pruning call (`VmHWM`, reset right before it; "
        "the resident model and interpreter count, the load's transient does not), resident set before pruning "
        "in brackets; peak anon: the highest anonymous resident set sampled every 10 ms during the call (the "
        "memory the process allocated itself, without library and model-file pages). "
        + (
            "Both tools import torch, triton and the NVIDIA libraries from the same files (see the script's "
            "docstring). "
            if result.get("shared_torch_files")
            else "Each tool imports torch from its own environment's files. "
        )
        + "The load average (1 min) before each run is in the .json.",
        "",
        "| configuration | tool | rounds | prune wall s | prune CPU s | peak MiB | peak anon MiB | perplexity "
        "| time ratio | ppl vs reference | peak vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in result["configs"]:
        got = {tool: [r for r in runs if r["config"] == config and r["tool"] == tool] for tool in TOOLS}
        ref = got["llm-compressor"]
        for tool in TOOLS:
            rs = got[tool]
            if not rs:
                continue
            wall = _median([r["prune_wall_s"] for r in rs])
            cpu = _median([r["prune_cpu_s"] for r in rs])
            peak = _median([r["peak_prune_mib"] for r in rs])
            before = _median([r["rss_before_prune_mib"] for r in rs])
            anon = [r["peak_anon_mib"] for r in rs if "peak_anon_mib" in r]
            anon_s = f"{_median(anon):.0f}" if anon else "-"
            ppl = rs[-1].get("ppl")
            ratio = pplr = peakr = ""
            if tool == "prunekit" and ref:
                pairs = [a["prune_wall_s"] / b["prune_wall_s"] for a, b in zip(rs, ref)]
                ratio = f"{_median(pairs):.2f}x"
                if ppl is not None and ref[-1].get("ppl"):
                    pplr = f"{100 * (ppl / ref[-1]['ppl'] - 1):+.2f}%"
                peakr = f"{peak / _median([r['peak_prune_mib'] for r in ref]):.2f}x"
            ppl_s = f"{ppl:.2f}" if ppl is not None else "-"
            lines.append(
                f"| {config} | {tool} | {len(rs)} | {wall:.1f} | {cpu:.1f} | {peak:.0f} ({before:.0f}) | {anon_s} "
                f"| {ppl_s} | {ratio} | {pplr} | {peakr} |"
            )
    dense = result.get("dense_ppl")
    lines += [
        "",
        f"Dense perplexity (same loop): {dense:.2f}." if dense else "",
        "Time ratio: median over rounds of prunekit's wall time over llm-compressor's in the same round. Targets "
        "(the issue's): time ratio <= 0.5x, perplexity within 1% of the reference's, peak memory no higher.",
        "",
        f"Reproduce: `{result['command']}`",
        "",
    ]
    (out / "vs_llmcompressor.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lc-python", required=True, help="python of the llm-compressor virtual environment")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="method:pattern, comma separated")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--samples", type=int, default=64, help="calibration windows (the protocol: 64)")
    ap.add_argument("--eval-tokens", type=int, default=16384, help="perplexity tokens (the protocol: 16,384)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs/results/llm"))
    ap.add_argument("--dense", action="store_true", help="also measure the dense perplexity")
    ap.add_argument("--tools", default=",".join(TOOLS), help="which tools to run (default: both)")
    ap.add_argument("--merge", action="store_true", help="keep the runs of other configurations already in OUT's .json")
    ap.add_argument(
        "--share-torch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="llm-compressor imports torch, triton and the NVIDIA libraries from this environment's files "
        "(default; see the module docstring)",
    )
    ap.add_argument(
        "--prunekit-options",
        type=json.loads,
        default={},
        help="more keyword arguments for prunekit.prune, as JSON (e.g. '{\"true_sequential\": false}')",
    )
    args = ap.parse_args()
    import torch
    import transformers

    configs = [c for c in args.configs.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tokens.pt"
        model_dir, protocol = prepare(args, data)
        args.shim = build_shim(args.lc_python, Path(tmp) / "shim") if args.share_torch else None
        lc_versions = subprocess.run(
            [
                args.lc_python,
                "-c",
                "import llmcompressor, torch, transformers; print(llmcompressor.__version__, torch.__version__, "
                "transformers.__version__)",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()[-3:]
        result = {
            "command": "python " + shlex.join(sys.argv),
            "protocol": (
                f"SmolLM2-135M float32, {args.threads} threads; calibration {args.samples} x 256 tokens of Emma "
                f"(seeded starts); perplexity on the first {protocol['eval_tokens']:,} tokens of Persuasion in "
                "windows of 512; every Linear in the decoder layers"
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "versions": (
                f"prunekit tree with torch {torch.__version__}, transformers {transformers.__version__}; "
                f"llm-compressor {' / '.join(lc_versions) or '?'} (llmcompressor / torch / transformers)"
            ),
            "configs": configs,
            "prunekit_options": args.prunekit_options,
            "shared_torch_files": bool(args.share_torch),
            "runs": [],
            **protocol,
        }
        if args.dense:
            result["dense_ppl"] = run_child("prunekit", args, data, model_dir, "dense:unstructured")["ppl"]
        out = Path(args.out)
        previous = out / "vs_llmcompressor.json"
        if args.merge and previous.exists():
            kept = json.loads(previous.read_text())
            result["runs"] = [r for r in kept["runs"] if r["config"] not in configs]
            result["configs"] = [c for c in kept["configs"] if c not in configs] + configs
            result["dense_ppl"] = result.get("dense_ppl", kept.get("dense_ppl"))
            result["command"] = kept.get("command", "") + "; " + result["command"]
        for config in configs:
            for rnd in range(args.rounds):
                tools = [t for t in TOOLS if t in args.tools.split(",")]
                order = tools if rnd % 2 == 0 else tools[::-1]
                for tool in order:
                    rec = run_child(tool, args, data, model_dir, config)
                    rec["round"] = rnd
                    result["runs"].append(rec)
                    print(json.dumps(rec), flush=True)
                    write(result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
