"""Data pipeline speed: the whole build (curate, train a tokenizer, tokenize to shards) over real
corpora with 1 and 2 workers, and tokenizer encode throughput against tiktoken on the same text.

    .venv/bin/python benchmarks/bench_data.py [--workers 1,2] [--descriptions 20000]

Sources: Debian package descriptions (first N), Shakespeare's works, and the Python standard
library's source, through the built-in recipes (fetched once into the cache, not timed). Each build
runs in a fresh process; peak RSS counts the main process and its workers. For the tokenizer
comparison, tiktoken gets an `Encoding` made from the very vocabulary the build trained (byte-level
BPE ranks and the GPT-2 split pattern), so both encode the same text into the same kind of tokens;
the agreement of their ids is printed. Results go to benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "data.json"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CODE_FILTERS = "{language: false, symbol_ratio: false, mean_word_length: false, alpha_words: false, stop_words: false, line_repetition: false, ngram_repetition: false}"  # noqa: E501


def config_text(descriptions: int) -> str:
    return f"""
sources:
  - recipe: debian-descriptions
    options: {{limit: {descriptions}}}
  - recipe: shakespeare
    filters: {{line_repetition: false, ngram_repetition: false}}
  - recipe: python-stdlib
    filters: {CODE_FILTERS}
tokenizer:
  train: {{vocab_size: 8192}}
  max_train_mb: 20
"""


def child(config: Path, output: str, workers: int) -> dict[str, Any]:
    from genloop.data.build import build

    start = time.perf_counter()
    result = build(config, [f"output={output}"], workers=workers, progress=False)
    seconds = time.perf_counter() - start
    sources = result.manifest["sources"]
    docs = sum(s["stages"].get("documents", 0) for s in sources)
    chars = sum(s["stages"].get("chars_in", 0) for s in sources)
    peak = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return {
        "workers": workers,
        "seconds": seconds,
        "stage_seconds": result.manifest["seconds"],
        "documents": docs,
        "mchars": chars / 1e6,
        "docs_per_s": docs / seconds,
        "mchars_per_s": chars / 1e6 / seconds,
        "curate_docs_per_s": docs / result.manifest["seconds"]["curate"],
        "train_tokens": result.manifest["splits"]["train"]["tokens"],
        "peak_rss_mib": peak / 1024,
    }


def tiktoken_from(tokenizer_dir: Path) -> Any:
    """A tiktoken Encoding over our byte-level BPE vocabulary: ranks are our ids (ids follow merge
    order in a trained BPE), bytes are the ByteLevel alphabet mapped back to raw bytes."""
    import tiktoken
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_of = {ch: b for b, ch in enumerate(sorted(alphabet, key=_gpt2_order))}
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    ranks = {
        bytes(byte_of[c] for c in token): i for token, i in vocab.items() if all(c in byte_of for c in token)
    }
    return tiktoken.Encoding("genloop-bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def _gpt2_order(ch: str) -> int:
    """Position of a ByteLevel alphabet character in GPT-2's bytes_to_unicode table (= its byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    if ord(ch) in printable:
        return ord(ch)
    extra = [b for b in range(256) if b not in printable]
    return extra[ord(ch) - 256]


def bench_tokenizers(output: Path, megabytes: float) -> dict[str, Any]:
    from genloop.data.parts import PartReader
    from genloop.preprocess.tokenizer import Tokenizer

    texts: list[str] = []
    size = 0
    state = json.loads((output / ".work" / "state.json").read_text())
    for folder in sorted((output / ".work").glob("[0-9][0-9][0-9]")):
        label = list(state["sources"])[int(folder.name)]
        for record in PartReader(folder, state["sources"][label]["parts"]).records():
            texts.append(record["text"])
            size += len(record["text"].encode())
            if size >= megabytes * 1e6:
                break
    ours = Tokenizer.load(output / "tokenizer")
    theirs = tiktoken_from(output / "tokenizer")
    results: dict[str, Any] = {"mb": size / 1e6}
    runs = {
        "genloop_batch": lambda: ours.encode_batch(texts, add_special_tokens=False),
        "tiktoken_batch": lambda: theirs.encode_ordinary_batch(texts, num_threads=2),
        "genloop_single_thread": lambda: [ours.encode(t, add_special_tokens=False) for t in texts],
        "tiktoken_single_thread": lambda: [theirs.encode_ordinary(t) for t in texts],
    }
    outputs = {}
    for name, fn in runs.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            outputs[name] = fn()
            best = min(best, time.perf_counter() - start)
        tokens = sum(len(x) for x in outputs[name])
        results[name] = {"seconds": best, "mb_per_s": size / 1e6 / best, "tokens_per_s": tokens / best}
    same = sum(a == b for a, b in zip(outputs["genloop_batch"], outputs["tiktoken_batch"], strict=True))
    results["identical_documents"] = same / len(texts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    parser.add_argument("--descriptions", type=int, default=20000, help="Debian descriptions to read")
    parser.add_argument("--tokenizer-mb", type=float, default=20, help="MB of text for the encode comparison")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "OUTPUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], int(args.child[2]))))
        return
    from genloop.data.recipes import get_recipe

    for name in ("debian-descriptions", "shakespeare", "python-stdlib"):
        get_recipe(name).fingerprint()  # fetch into the cache now, so no build times a download
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(config_text(args.descriptions))
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out{workers}"
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(config), str(out), str(workers)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(
                f"workers={workers}: {r['seconds']:.1f} s, {r['documents']:,} documents, "
                f"{r['docs_per_s']:,.0f} docs/s, {r['mchars_per_s']:.2f} M chars/s "
                f"(curation alone {r['curate_docs_per_s']:,.0f} docs/s), stages {r['stage_seconds']}, "
                f"{r['train_tokens']:,} train tokens, peak RSS {r['peak_rss_mib']:,.0f} MiB"
            )
        if len(runs) > 1:
            whole = runs[0]["seconds"] / runs[-1]["seconds"]
            curation = runs[-1]["curate_docs_per_s"] / runs[0]["curate_docs_per_s"]
            print(
                f"speed-up {runs[0]['workers']} -> {runs[-1]['workers']} workers: "
                f"{whole:.2f}x whole build, {curation:.2f}x curation"
            )
        tok = bench_tokenizers(Path(tmp) / f"out{runs[-1]['workers']}", args.tokenizer_mb)
    for mode in ("batch", "single_thread"):
        ours, theirs = tok[f"genloop_{mode}"], tok[f"tiktoken_{mode}"]
        print(
            f"encode {mode.replace('_', ' ')} ({tok['mb']:.1f} MB): genloop (HF tokenizers) "
            f"{ours['mb_per_s']:.2f} MB/s {ours['tokens_per_s'] / 1e6:.2f} M tok/s, tiktoken "
            f"{theirs['mb_per_s']:.2f} MB/s {theirs['tokens_per_s'] / 1e6:.2f} M tok/s, "
            f"ratio {ours['mb_per_s'] / theirs['mb_per_s']:.2f}x"
        )
    print(f"identical token ids: {100 * tok['identical_documents']:.1f}% of documents")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"builds": runs, "tokenizers": tok}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
