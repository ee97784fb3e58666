"""`genloop config`: check a YAML config (with overrides) and show it with every default filled in."""

from __future__ import annotations

import argparse

from genloop.config import RunConfig, dump_yaml, load_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "config",
        help="check and show run configs (YAML + key=value overrides)",
        description="Validate a run config and print it with every default spelled out.",
    )
    cmds = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = cmds.add_parser(
        "check",
        help="validate CONFIG.yaml and print the resolved config",
        description="Validate CONFIG.yaml (plus overrides) and print the resolved YAML.",
    )
    check.add_argument(
        "config", help="path of a YAML run config (sections: preset, model, tokenizer, data, train)"
    )
    check.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override any key, dotted for nesting: train.learning_rate=1e-3 model.n_layers=4",
    )
    check.set_defaults(handler=_check)
    defaults = cmds.add_parser(
        "defaults",
        help="print the default run config as YAML (a starting point)",
        description="Print every key of a run config with its default value.",
    )
    defaults.add_argument("overrides", nargs="*", metavar="key=value", help="override keys before printing")
    defaults.set_defaults(handler=_defaults)


def _check(args: argparse.Namespace) -> int:
    print(dump_yaml(load_config(RunConfig, args.config, args.overrides)), end="")
    return 0


def _defaults(args: argparse.Namespace) -> int:
    print(dump_yaml(load_config(RunConfig, None, args.overrides)), end="")
    return 0
