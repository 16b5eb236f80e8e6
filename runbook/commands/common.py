"""Arguments and helpers shared by several subcommands (kept import-light)."""

from __future__ import annotations

import argparse


def add_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", metavar="DIR", help="where runbooks live (default: $RUNBOOK_PATH or ./playbooks)")


def add_inventory(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--inventory", "-i", metavar="FILE", help="inventory file")
    g.add_argument("--env", "-e", metavar="NAME", help="environment: reads inventory/NAME.yaml")


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    from runbook.errors import UsageError

    out: dict[str, str] = {}
    for item in pairs or []:
        if "=" not in item:
            raise UsageError(f"{flag} takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        if not k:
            raise UsageError(f"{flag} takes key=value, got {item!r}")
        out[k.strip()] = v
    return out
