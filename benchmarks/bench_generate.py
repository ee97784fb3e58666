"""Generation speed on SmolLM2-135M-Instruct: genloop's engine in each dtype vs transformers fp32
`generate`, in one run on this machine.

    .venv/bin/python benchmarks/bench_generate.py [--dtypes float32,bfloat16,int8,int4] [--quick]

A dtype with "+compile" (e.g. --dtypes int4,int4+compile) runs the engine with its decode step
compiled (Engine(compile=True)); compile time is spent in the warm-up, outside the figures. The
concurrent chat prompts all begin with the template's system prompt, which the engine prefills once
per admitted group (Engine(share_prefixes=True), its default; nothing is kept between runs: the
prefix cache is off); "+noshare" (e.g. int4+noshare) measures without it.

Measures batch-1 decode tok/s, prefill tok/s for 512 tokens, time to first token (short chat prompt),
aggregate tok/s at 1, 8 and 32 concurrent requests (through the scheduler for genloop, one padded
batch for transformers; 64 new tokens each) and peak RSS, each figure the median of --repeats
runs; prints ratios against transformers fp32 and writes benchmarks/results/generate.json (--out
to write elsewhere), with the CPU's vector ISA: which kernels are fast depends on it (AVX2 alone,
or AVX-512 with VNNI and native bf16), so figures compare only within one kind of CPU. Each
configuration runs in its own fresh process, so that one's
threads, allocator state and peak RSS never leak into another's figures.

    .venv/bin/python benchmarks/bench_generate.py --postprocess [--dtypes int4]

measures the cost of the default postprocess pipeline (formatting and PII redaction applied to every
streamed piece): the same figures with it off and on, alternating processes, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from genloop.checkpoint.pull import pull
from genloop.generate import Engine, SamplingParams
from genloop.postprocess import load_postprocess

RESULTS = Path(__file__).parent / "results" / "generate.json"
LLAMA_CPP_Q4_1 = 97.0  # tok/s, batch-1 decode, measured here with llama-cpp-python (issue 4)


def _median(fn: Any, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _prompt_ids(engine: Engine, n: int) -> list[int]:
    text = " ".join(["The quick brown fox jumps over the lazy dog while the sun sets behind the hills."] * 60)
    return engine.tokenizer.encode(text, add_special_tokens=False)[:n]


def bench_engine(
    path: Path,
    dtype: str,
    repeats: int,
    concurrency: list[int],
    new_tokens: int,
    post: bool = False,
    compile: bool = False,
    share: bool = True,
) -> dict[str, Any]:
    pipeline = load_postprocess(None) if post else None
    engine = Engine(
        path,
        dtype=dtype,
        max_batch=max(concurrency),
        max_seq_len=1024,
        prefix_cache_tokens=0,
        postprocess=pipeline,
        compile=compile,
        share_prefixes=share,
    )
    chat = [{"role": "user", "content": "Write a short story about a robot learning to paint."}]
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine.generate(chat, warm)  # warm-up; with compile, also the one-row and many-row graphs
    if compile:
        engine.generate([chat, chat], warm)

    def decode_rate() -> float:
        stamps: list[float] = []
        request = engine.submit(chat, greedy, on_delta=lambda d: stamps.append(time.perf_counter()))
        request.done.wait()
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def ttft() -> float:
        start, first = time.perf_counter(), []
        r = engine.submit(
            chat,
            SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
            on_delta=lambda d: first.append(time.perf_counter()),
        )
        r.done.wait()
        return first[0] - start

    long_prompt = _prompt_ids(engine, 512)

    def prefill_rate() -> float:
        start, first = time.perf_counter(), []
        r = engine.submit(
            long_prompt,
            SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
            on_delta=lambda d: first.append(time.perf_counter()),
        )
        r.done.wait()
        return 512 / (first[0] - start)

    def aggregate(n: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
        prompts = [
            [{"role": "user", "content": f"Tell me fact number {i} about the ocean."}] for i in range(n)
        ]
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        return sum(o.completion_tokens for o in outs) / (time.perf_counter() - start)

    result = {
        "decode_tok_s": _median(decode_rate, repeats),
        "prefill_512_tok_s": _median(prefill_rate, repeats),
        "ttft_s": _median(ttft, repeats),
        "concurrent_tok_s": {str(n): _median(lambda n=n: aggregate(n), repeats) for n in concurrency},
    }
    engine.close()
    return result


def bench_transformers(path: Path, repeats: int, concurrency: list[int], new_tokens: int) -> dict[str, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Write a short story about a robot learning to paint."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    def gen(inputs: dict[str, torch.Tensor], n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - start

    gen(chat, 4)
    t1 = _median(lambda: gen(chat, 1), repeats)
    decode = _median(lambda: (new_tokens - 1) / (gen(chat, new_tokens) - t1), repeats)
    ids = torch.tensor([_prompt_ids_hf(tok, 512)])
    prefill = _median(
        lambda: 512 / gen({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 1), repeats
    )

    def aggregate(n: int) -> float:
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": f"Tell me fact number {i} about the ocean."}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for i in range(n)
        ]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return n * 64 / gen(dict(batch), 64)

    return {
        "decode_tok_s": decode,
        "prefill_512_tok_s": prefill,
        "ttft_s": t1,
        "concurrent_tok_s": {str(n): _median(lambda n=n: aggregate(n), repeats) for n in concurrency},
    }


def _prompt_ids_hf(tok: Any, n: int) -> list[int]:
    text = " ".join(["The quick brown fox jumps over the lazy dog while the sun sets behind the hills."] * 60)
    return tok(text, add_special_tokens=False)["input_ids"][:n]


def _run_one(name: str, repeats: int, concurrency: list[int], new_tokens: int) -> dict[str, Any]:
    """One configuration, measured in this process; `name` is transformers_float32 or genloop_DTYPE."""
    path = pull(progress=False)
    if name == "transformers_float32":
        result = bench_transformers(path, repeats, concurrency, new_tokens)
    else:
        dtype, *options = name.removeprefix("genloop_").split("+")
        flags = {"post": "post" in options, "compile": "compile" in options}
        flags["share"] = "noshare" not in options
        result = bench_engine(path, dtype, repeats, concurrency, new_tokens, **flags)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dtypes",
        default="float32,bfloat16,int8,int4,bfloat16+compile,int4+compile",
        help="genloop dtypes to measure; DTYPE+compile compiles the decode step, DTYPE+noshare prefills "
        "each prompt's system prompt again",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per figure (median)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per batch-1 decode measurement")
    ap.add_argument("--quick", action="store_true", help="1 repeat, concurrency 1 and 8 only")
    ap.add_argument(
        "--postprocess", action="store_true", help="the default postprocess pipeline off vs on (first dtype)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration, print JSON
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    concurrency = [1, 8] if args.quick else [1, 8, 32]
    if args.one:
        print(json.dumps(_run_one(args.one, repeats, concurrency, args.new_tokens)))
        return
    pull(progress=False)
    if args.postprocess:
        postprocess_overhead(args.dtypes.split(",")[0], repeats, args.new_tokens, args.quick)
        return
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "model": "smollm2-135m-instruct"}
    results["cpu"] = _cpu()
    for name in ["transformers_float32", *(f"genloop_{d}" for d in args.dtypes.split(","))]:
        results[name] = _measure(name, repeats, args.new_tokens, args.quick)
    runs = {name: r for name, r in results.items() if name.startswith(("transformers_", "genloop_"))}
    results["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs.values())
    ref = results["transformers_float32"]
    cpu = results["cpu"]
    print(
        f"SmolLM2-135M-Instruct, {results['threads']} threads, median of {repeats}; CPU {cpu['isa']}, "
        f"VNNI {cpu['vnni']}, native bf16 {cpu['native_bf16']}"
    )
    header = f"{'':<22}{'decode':>9}{'prefill512':>11}{'ttft s':>8}" + "".join(
        f"{'x' + c:>9}" for c in map(str, concurrency)
    )
    print(header + f"{'RSS MiB':>8}   (tok/s; xN = N concurrent)")
    for name, r in runs.items():
        row = f"{name:<22}{r['decode_tok_s']:>9.1f}{r['prefill_512_tok_s']:>11.0f}{r['ttft_s']:>8.3f}"
        row += "".join(f"{r['concurrent_tok_s'][str(c)]:>9.1f}" for c in concurrency)
        row += f"{r['peak_rss_mib']:>8.0f}"
        print(row)
        if name != "transformers_float32":
            ratios = {
                "decode": r["decode_tok_s"] / ref["decode_tok_s"],
                "prefill": r["prefill_512_tok_s"] / ref["prefill_512_tok_s"],
                **{
                    f"x{c}": r["concurrent_tok_s"][str(c)] / ref["concurrent_tok_s"][str(c)]
                    for c in concurrency
                },
            }
            r["ratio_vs_transformers"] = ratios
            print(
                f"{'':<22}"
                + "  ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                + f"  | vs llama.cpp Q4_1 decode ({LLAMA_CPP_Q4_1:.0f} tok/s): "
                + f"{r['decode_tok_s'] / LLAMA_CPP_Q4_1:.2f}x"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _cpu() -> dict[str, Any]:
    """The vector ISA PyTorch dispatches to, and the two features genloop's kernel choices follow."""
    from genloop.model.quantize import HAS_VNNI, KEEP_DENSE

    return {"isa": torch.backends.cpu.get_cpu_capability(), "vnni": HAS_VNNI, "native_bf16": KEEP_DENSE}


def _measure(name: str, repeats: int, new_tokens: int, quick: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--one", name, "--repeats", str(repeats)]
    argv += ["--new-tokens", str(new_tokens)] + (["--quick"] if quick else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def postprocess_overhead(dtype: str, rounds: int, new_tokens: int, quick: bool) -> None:
    """Pipeline off and on in alternating fresh processes (`rounds` each); medians and their ratio."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(rounds):
        runs["off"].append(_measure(f"genloop_{dtype}", 1, new_tokens, quick))
        runs["on"].append(_measure(f"genloop_{dtype}+post", 1, new_tokens, quick))
    figures = {}
    for key in ("off", "on"):
        figures[key] = {
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs[key]),
            "concurrent_tok_s": {
                c: statistics.median(r["concurrent_tok_s"][c] for r in runs[key])
                for c in runs[key][0]["concurrent_tok_s"]
            },
        }
    off, on = figures["off"], figures["on"]
    print(f"SmolLM2-135M-Instruct {dtype}, default postprocess pipeline, median of {rounds} processes each")
    print(f"{'':<6}{'decode':>9}" + "".join(f"{'x' + c:>9}" for c in off["concurrent_tok_s"]) + "   (tok/s)")
    for key, fig in figures.items():
        print(
            f"{key:<6}{fig['decode_tok_s']:>9.1f}"
            + "".join(f"{v:>9.1f}" for v in fig["concurrent_tok_s"].values())
        )
    ratios = {"decode": on["decode_tok_s"] / off["decode_tok_s"]}
    ratios |= {f"x{c}": on["concurrent_tok_s"][c] / v for c, v in off["concurrent_tok_s"].items()}
    print("on/off " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    out = RESULTS.with_name("generate_postprocess.json")
    out.write_text(
        json.dumps({"dtype": dtype, "off": off, "on": on, "ratio_on_off": ratios}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
