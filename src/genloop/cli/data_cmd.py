"""`genloop data build|inspect|recipes|sft|preference`: curate corpora into shards and fine-tuning sets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from genloop.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "data", help="collect and curate text: shards for training, JSONL for fine-tuning"
    )

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(parser))

    build = commands.add_parser(
        "build",
        help="sources -> filtered, deduplicated, PII-scrubbed, tokenized shards",
        description="Run the data pipeline a YAML config describes. Interrupted builds resume; a "
        "finished build with the same config and inputs is only checked.",
    )
    build.add_argument("config", type=Path, help="build config (YAML; see examples/data/corpus.yaml)")
    build.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (validation=0.02)"
    )
    build.add_argument(
        "--workers", type=int, default=None, help="worker processes for curation (default: all cores)"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    build.set_defaults(handler=_build)

    inspect = commands.add_parser("inspect", help="counts, sample documents and token histograms of shards")
    inspect.add_argument("shards", type=Path, help="a shard folder (holding manifest.json)")
    inspect.add_argument("--split", default="train", help="split to sample (default: train)")
    inspect.add_argument("--samples", type=int, default=3, help="sample documents to print (default: 3)")
    inspect.add_argument("--chars", type=int, default=300, help="characters shown per sample (default: 300)")
    inspect.add_argument("--seed", type=int, default=0, help="which samples (default: 0)")
    inspect.add_argument("--plot", type=Path, help="histogram PNG (default: SHARDS/inspect.png)")
    inspect.set_defaults(handler=_inspect)

    recipes = commands.add_parser("recipes", help="list the built-in recipes for real public corpora")
    recipes.set_defaults(handler=_recipes)

    for kind, what in (("sft", "chat/instruction"), ("preference", "preference (prompt, chosen, rejected)")):
        p = commands.add_parser(kind, help=f"build {what} JSONL from recipes and files")
        p.add_argument("--out", type=Path, required=True, help="JSONL file to write (atomically)")
        p.add_argument(
            "--recipe", action="append", default=[], metavar="NAME[:K=V,...]",
            help="a recipe with examples, e.g. chitchat or ddtp-translations:language=fr (repeatable)",
        )  # fmt: skip
        p.add_argument("--file", action="append", default=[], type=Path, help="a JSONL file (repeatable)")
        p.add_argument("--prompt-field", default="prompt", help="field holding the prompt (default: prompt)")
        p.add_argument("--limit", type=int, help="at most this many records per recipe or file")
        if kind == "sft":
            p.add_argument("--messages-field", default="messages", help="field holding chat messages")
            p.add_argument("--completion-field", default="completion", help="field holding the answer")
            p.add_argument(
                "--format", choices=("messages", "prompt"), default="messages",
                help="write {messages} (default) or {prompt, completion}",
            )  # fmt: skip
        else:
            p.add_argument("--chosen-field", default="chosen", help="field holding the preferred answer")
            p.add_argument("--rejected-field", default="rejected", help="field holding the worse answer")
            p.add_argument("--seed", type=int, default=0, help="seed for mismatched-answer negatives")
        p.set_defaults(handler=_examples, kind=kind)


def _build(args: argparse.Namespace) -> int:
    from genloop.data.build import build

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    result = build(args.config, args.overrides, workers=args.workers, progress=not args.no_progress)
    splits = result.manifest["splits"]
    if result.up_to_date:
        print(f"up to date: {result.output} (same config and inputs; delete the folder to rebuild)")
    else:
        print(f"built {result.output} in {result.seconds:.0f} s")
    print(
        f"  train {splits['train']['tokens']:,} tokens in {splits['train']['documents']:,} documents, "
        f"validation {splits['validation']['tokens']:,} tokens; report: {result.output / 'report.md'}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from genloop.data.inspect import inspect_shards, plot_inspection

    result = inspect_shards(args.shards, args.split, args.samples, args.seed)
    m = result.manifest
    print(f"{args.shards}: {m['dtype']} tokens, vocabulary {m['tokenizer']['vocab_size']:,}")
    for split, info in m["splits"].items():
        print(
            f"  {split:<10} {info['tokens']:>14,} tokens {info['documents']:>10,} documents "
            f"{len(info['shards'])} shard(s)"
        )
    for source in m["sources"]:
        tokens = sum(source["tokens"].values())
        print(
            f"  source {source['name']:<24} {tokens:>14,} tokens  "
            f"({source['licence'] or 'licence not recorded'})"
        )
    if result.doc_lengths.size:
        q = [
            int(x)
            for x in (
                result.doc_lengths.min(),
                *result.doc_lengths.mean(keepdims=True),
                result.doc_lengths.max(),
            )
        ]
        print(f"  document length in tokens: min {q[0]:,}, mean {q[1]:,}, max {q[2]:,}")
    print("  top tokens: " + ", ".join(f"{t!r} {n:,}" for t, n in result.top_tokens[:10]))
    for i, text in enumerate(result.samples, 1):
        shown = text[: args.chars].replace("\n", " ")
        print(f"--- sample {i} ({len(text):,} chars)\n{shown}{' ...' if len(text) > args.chars else ''}")
    plot = args.plot or args.shards / "inspect.png"
    plot_inspection(plot, result)
    print(f"histograms: {plot}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from genloop.data.recipes import RECIPES

    for name, recipe in RECIPES.items():
        forms = "+".join(f for f, ok in (("text", recipe.has_text), ("examples", recipe.has_examples)) if ok)
        print(f"{name:<22} {forms:<14} {recipe.licence:<28} {recipe.description}")
    return 0


def _examples(args: argparse.Namespace) -> int:
    from genloop.data.examples import Fields, build_examples

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    fields = Fields(prompt=args.prompt_field)
    if args.kind == "sft":
        fields.messages, fields.completion = args.messages_field, args.completion_field
    else:
        fields.chosen, fields.rejected = args.chosen_field, args.rejected_field
    summary = build_examples(
        args.kind, args.out, args.recipe, args.file, fields,
        fmt=getattr(args, "format", "messages"), limit=args.limit, seed=getattr(args, "seed", 0),
    )  # fmt: skip
    parts = ", ".join(f"{os.path.basename(k)} {n:,}" for k, n in summary.per_source.items())
    print(f"wrote {summary.written:,} {args.kind} records to {args.out} ({parts})")
    for reason, n in summary.skipped.items():
        where = f" (first at {summary.first_bad[reason]})" if reason in summary.first_bad else ""
        print(f"  skipped {n:,}: {reason}{where}")
    return 0
