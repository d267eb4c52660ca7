#!/usr/bin/env python
"""Sampling speed of the engines, measured in one run on the same prompts and settings: tokens/s
(completion tokens, eos excluded) of the HF loop at its default batch (chosen from memory) and at
its best batch of a sweep, of the vLLM engine through the kit (``hooks.generate(engine="vllm")``:
pipe, per-row seeds), and of bare vLLM (``LLM.generate`` in the vLLM environment, one
SamplingParams, no per-row seeds; and with a seed per request, as the kit sends), with the ratios. Targets (issue 19): kit vLLM >= 0.8x bare
vLLM; kit vLLM >= 10x the HF default on the organism; HF default >= 0.8x HF best.

    python benchmarks/sampling.py                         # organism base, 256 prompts x 8 samples
    python benchmarks/sampling.py --model random-100m --n-prompts 32 --n-samples 4
    python benchmarks/sampling.py --no-vllm               # HF batches only

Engine start-up (vLLM: 15-20 s on 2 idle cores) is timed apart and not in the rates. Needs vLLM for
the vLLM rows (`make vllm`).

Measured 2026-11-30 on the 2-core box while 8 other jobs ran (load 15-19: every number is noisy,
ratios of runs minutes apart especially), organism base, temperature 1, <= 100 tokens:
2048 rows: HF batch 256 / 512 / 1024 / 2048: 410 / 434 / 259 / 227 tok/s (hence the 160 MiB
CPU budget, ~512 rows); kit vLLM 1,155, bare vLLM 2,660 tok/s (0.43x). 1024 rows: HF default
(496) 321, HF 256 509, kit vLLM 1,977, bare vLLM 2,415, bare with per-request seeds 3,089 tok/s
(kit/bare 0.82x, kit/HF default 6.2x). Issue 19's idle-box numbers: vLLM 11.2k tok/s vs HF 313
at batch 64. Per-request seeds (the kit's reproducibility contract) make vLLM draw row by row
(its sampler loops over seeded requests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import organism  # noqa: E402
from hooks import generate, load_model  # noqa: E402
from hooks.generation import default_batch_size  # noqa: E402

BARE_VLLM = r'''
import json, sys, time
def main():
    cfg = json.load(open(sys.argv[1]))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(model=cfg["folder"], dtype=cfg["dtype"], skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=cfg["max_model_len"], gpu_memory_utilization=cfg["util"], seed=0,
              generation_config="vllm", enable_prefix_caching=False)
    sp = SamplingParams(temperature=cfg["temperature"], top_p=cfg["top_p"], max_tokens=cfg["max_tokens"],
                        stop_token_ids=[cfg["eos"]], detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in cfg["prompts"]]
    # The same, each request with its own seed (what the kit sends: vLLM then draws per request).
    seeded = [SamplingParams(temperature=cfg["temperature"], top_p=cfg["top_p"], max_tokens=cfg["max_tokens"],
                             stop_token_ids=[cfg["eos"]], detokenize=False, seed=i) for i in range(len(prompts))]
    llm.generate(prompts[:8], sp, use_tqdm=False)  # warm-up, like the kit's engine after start
    for name, params in (("RATE", sp), ("RATE_SEEDED", seeded)):
        best = 0.0
        for _ in range(cfg["repeats"]):
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            n = sum(len([x for x in o.outputs[0].token_ids if x != cfg["eos"]]) for o in outs)
            best = max(best, n / (time.perf_counter() - t))
        print(name, best, flush=True)
if __name__ == "__main__":
    main()
'''


def random_100m(folder: Path) -> Path:
    """A random-weight Llama of ~100M parameters (12 layers, d 768, head_dim 64), saved with the
    organism's tokenizer (vocab 32; the embedding is a negligible share of the compute)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = organism.checkpoint_path("base")
    cfg = LlamaConfig(vocab_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in src.iterdir():
        if f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def best_rate(fn, repeats: int) -> float:
    """Tokens/s of the fastest of `repeats` runs (a shared box: the least disturbed run)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n_tokens = fn()
        best = max(best, n_tokens / (time.perf_counter() - t))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", help="organism checkpoint name, folder, or random-100m")
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 2048],
                    help="HF batch sizes swept for the best one")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="twinlens-bench-"))
    path = random_100m(tmp / "random-100m") if args.model == "random-100m" else (
        organism.checkpoint_path(args.model) if args.model in organism.list_checkpoints() else Path(args.model))
    model = load_model(path)
    from organism.task import eval_problems

    prompts = [model.encode(p.prompt) for p in eval_problems(args.n_prompts)]
    kw = dict(temperature=args.temperature, top_p=args.top_p, n=args.n_samples, seed=0)
    rows = len(prompts) * args.n_samples
    longest = max(map(len, prompts)) + args.max_new_tokens
    auto = default_batch_size(model, longest)
    print(f"{args.model}: {rows} rows x <= {args.max_new_tokens} new tokens, temperature {args.temperature}, "
          f"top-p {args.top_p}; HF default batch {auto} (KV cache {model.hf.config.num_hidden_layers} layers)")

    def hf(batch: int | None):
        return lambda: sum(map(len, generate(model, prompts, args.max_new_tokens, batch_size=batch, **kw)))

    rates = {"hf_default": best_rate(hf(None), args.repeats)}
    print(f"  HF default (batch {min(auto, rows)}): {rates['hf_default']:,.0f} tok/s", flush=True)
    sweep = {}
    for b in args.batches:
        if b >= rows and auto >= rows:
            sweep[b] = rates["hf_default"]  # the same single batch as the default
        else:
            sweep[b] = best_rate(hf(b), args.repeats)
        print(f"  HF batch {b}: {sweep[b]:,.0f} tok/s", flush=True)
    best_b = max(sweep, key=sweep.get)
    rates["hf_best"] = max(sweep[best_b], rates["hf_default"])
    out = {"hf_default_over_best": rates["hf_default"] / rates["hf_best"]}
    if not args.no_vllm:
        from hooks.vllm_engine import get_engine

        t = time.perf_counter()
        engine = get_engine(model)
        generate(model, prompts[:8], args.max_new_tokens, engine="vllm", **kw)  # warm-up
        print(f"  vLLM engine start-up {time.perf_counter() - t:.1f} s ({engine.describe()['build']} build)")
        rates["kit_vllm"] = best_rate(
            lambda: sum(map(len, generate(model, prompts, args.max_new_tokens, engine="vllm", **kw))), args.repeats)
        print(f"  kit vLLM engine: {rates['kit_vllm']:,.0f} tok/s", flush=True)
        cfg = {"folder": str(engine.folder), "dtype": engine.dtype, "max_model_len": engine.max_model_len,
               "util": 0.1 if engine.cpu else 0.4, "temperature": args.temperature, "top_p": args.top_p,
               "max_tokens": args.max_new_tokens, "eos": model.tokenizer.eos_token_id, "repeats": args.repeats,
               "prompts": [p for p in prompts for _ in range(args.n_samples)]}
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        (tmp / "bare.py").write_text(BARE_VLLM)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        proc = subprocess.run([engine.python, str(tmp / "bare.py"), str(tmp / "cfg.json")], capture_output=True,
                              text=True, env=env)
        found = dict(x.split() for x in proc.stdout.splitlines() if x.startswith("RATE"))
        if "RATE_SEEDED" not in found:
            print(proc.stderr[-3000:])
            return 1
        rates["bare_vllm"], rates["bare_vllm_seeded"] = float(found["RATE"]), float(found["RATE_SEEDED"])
        print(f"  bare vLLM: {rates['bare_vllm']:,.0f} tok/s; with a seed per request: "
              f"{rates['bare_vllm_seeded']:,.0f} tok/s", flush=True)
        out["kit_vllm_over_bare"] = rates["kit_vllm"] / rates["bare_vllm"]
        out["kit_vllm_over_bare_seeded"] = rates["kit_vllm"] / rates["bare_vllm_seeded"]
        out["kit_vllm_over_hf_default"] = rates["kit_vllm"] / rates["hf_default"]
    print(f"  HF best batch: {best_b}")
    for k, v in out.items():
        print(f"  {k}: {v:.2f}x")
    print(json.dumps({"rates_tok_s": {k: round(v, 1) for k, v in rates.items()}, "ratios": out,
                      "hf_best_batch": best_b, "hf_default_batch": min(auto, rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
