#!/usr/bin/env python
"""Peak memory of per-token log-prob scoring, as a ratio against the full-logits baseline
measured in the same run.

    python benchmarks/scoring.py [--vocab 32000] [--batch 8] [--length 512]

Baseline: what analyses.sampling did before chunking: one forward giving full-vocabulary logits
for the whole batch (batch x length x vocab floats), then a log-softmax per row. Chunked:
``score_completions`` (the model body once per batch, the LM head and log-softmax on
LOGPROB_CHUNK positions at a time). Each runs in a fresh subprocess; the number is the growth of
peak RSS over the RSS after loading the model. Both give the same log-probs (checked here, and
in tests/test_scoring.py). Target: what scoring adds beyond the model body's
own forward (attention grows with length^2 whatever the scoring) stays ~flat when batch x length
grows 4x, and the chunked growth is a small fraction of the baseline's. Model: a random-weight 2-layer Qwen2 (d 64) with a
real vocabulary size, built from a config (no download).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_model(folder: Path, vocab: int) -> Path:
    from conftest import save_char_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    save_char_tokenizer(folder)  # ids beyond its vocabulary are fine: we feed token ids
    return folder


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(folder: str, mode: str, batch: int, length: int) -> None:
    from analyses.sampling import _padded, score_completions
    from hooks import load_model
    from hooks.generation import pad_token_id

    torch.set_num_threads(1)
    model = load_model(folder)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 40, (batch, 8), generator=g).tolist()
    comps = torch.randint(0, model.hf.config.vocab_size, (batch, length), generator=g).tolist()
    score_completions(model, prompts[:1], [c[:4] for c in comps[:1]])  # warm up allocators
    before = rss_mb()
    if mode == "chunked":
        scores = score_completions(model, prompts, comps, batch_size=batch)
    elif mode == "body":  # the forward of the model body alone: what any scoring must pay
        with torch.no_grad():
            ids, mask = _padded([p + c for p, c in zip(prompts, comps, strict=True)], pad_token_id(model.tokenizer))
            model.hf.base_model(input_ids=ids, attention_mask=mask)
        scores = [[0.0] * 4]
    else:
        with torch.no_grad():
            ids, mask = _padded([p + c for p, c in zip(prompts, comps, strict=True)], pad_token_id(model.tokenizer))
            logits = model.hf(input_ids=ids, attention_mask=mask).logits
            scores = []
            for r, (p, c) in enumerate(zip(prompts, comps, strict=True)):
                lp = torch.log_softmax(logits[r, len(p) - 1 : len(p) - 1 + len(c)].float(), dim=-1)
                scores.append(lp.gather(-1, torch.tensor(c)[:, None]).squeeze(-1).tolist())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"growth_mb": peak - before, "first": scores[0][:4], "last": scores[-1][-4:]}))


def measure(folder: Path, mode: str, batch: int, length: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(batch), str(length)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, mode, batch, length = args.child
        child(folder, mode, int(batch), int(length))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "m", args.vocab)
        full = measure(folder, "full", args.batch, args.length)
        chunked = measure(folder, "chunked", args.batch, args.length)
        body = measure(folder, "body", args.batch, args.length)
        bigger = measure(folder, "chunked", 2 * args.batch, 2 * args.length)
        bigger_body = measure(folder, "body", 2 * args.batch, 2 * args.length)
    same = max(abs(a - b) for a, b in zip(full["first"] + full["last"], chunked["first"] + chunked["last"], strict=True))
    logits_mb = args.batch * (args.length + 8) * args.vocab * 4 / 2**20
    print(f"scoring {args.batch} x {args.length} tokens, vocab {args.vocab} (full logits {logits_mb:.0f} MB):")
    print(f"  peak RSS growth: full logits {full['growth_mb']:.0f} MB, chunked {chunked['growth_mb']:.0f} MB "
          f"(ratio {chunked['growth_mb'] / full['growth_mb']:.3f}); the model body's forward alone "
          f"{body['growth_mb']:.0f} MB; log-probs differ by at most {same:.1e}")
    print(f"  at 4x the tokens: chunked {bigger['growth_mb']:.0f} MB, body alone {bigger_body['growth_mb']:.0f} MB "
          f"(scoring beyond the body: {chunked['growth_mb'] - body['growth_mb']:.0f} MB -> "
          f"{bigger['growth_mb'] - bigger_body['growth_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
