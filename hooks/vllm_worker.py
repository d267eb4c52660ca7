"""The vLLM side of ``hooks.vllm_engine``: one model, served over a pipe, one JSON line a message.

Runs under the interpreter that has vLLM (its own environment: vLLM pins a transformers range the
kit's environment need not share), started by ``hooks.vllm_engine.VLLMEngine`` as
``python hooks/vllm_worker.py``; it imports nothing of the kit. Protocol (stdin -> stdout):

    {"model": folder, "dtype": ..., "max_model_len": ..., "gpu_memory_utilization": ..., "seed": ...}
        -> {"ok": true, "vllm_version": ...}
    {"op": "generate", "prompts": [[ids]], "seeds": [int], "temperature": t, "top_p": p,
     "max_tokens": m, "stop_token_ids": [eos]}
        -> {"outputs": [{"ids": [completion ids, eos included when it stopped there], "finish": reason}]}
    {"op": "score", "sequences": [[prompt + completion ids]], "starts": [len(prompt)]}
        -> {"logprobs": [[log p(token t | tokens < t) for t >= start]]}   (vLLM prompt_logprobs:
           the raw, untempered next-token distribution)
    {"op": "close"} -> exits.
Any failure of a request answers {"error": text}; stdout carries nothing but replies (vLLM's own
prints are sent to stderr).
"""

import json
import os
import sys


def _reply(out, obj) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _generate(llm, req):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        SamplingParams(
            n=1, temperature=req["temperature"], top_p=req["top_p"] if req["temperature"] > 0 else 1.0,
            max_tokens=req["max_tokens"], seed=s, stop_token_ids=req["stop_token_ids"],
            detokenize=False, skip_special_tokens=False,
        )
        for s in req["seeds"]
    ]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in req["prompts"]], params, use_tqdm=False)
    return {"outputs": [{"ids": list(o.outputs[0].token_ids), "finish": o.outputs[0].finish_reason} for o in outs]}


def _score(llm, req):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    seqs, starts = req["sequences"], req["starts"]
    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
    result = []
    for o, seq, start in zip(outs, seqs, starts, strict=True):
        plp = o.prompt_logprobs  # [None, {token id: Logprob}, ...], one entry per prompt token
        result.append([plp[t][seq[t]].logprob for t in range(start, len(seq))])
    return {"logprobs": result}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # The kit's hooks/ folder must not shadow any module vLLM imports.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    init = json.loads(sys.stdin.readline())
    try:
        import vllm
        from vllm import LLM

        llm = LLM(
            model=init["model"], dtype=init["dtype"], seed=init["seed"], skip_tokenizer_init=True,
            max_model_len=init["max_model_len"], gpu_memory_utilization=init["gpu_memory_utilization"],
            enforce_eager=init.get("enforce_eager", True), generation_config="vllm",
            enable_prefix_caching=False,
        )
    except Exception as exc:  # reported to the kit, which raises it with the fix
        _reply(out, {"error": f"{type(exc).__name__}: {exc}"})
        return
    _reply(out, {"ok": True, "vllm_version": vllm.__version__})
    ops = {"generate": _generate, "score": _score}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "close":
            break
        try:
            _reply(out, ops[req["op"]](llm, req))
        except Exception as exc:
            _reply(out, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
