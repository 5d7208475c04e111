"""`yuneta` command line: run a yuno from JSON configs, or only check them.

    yuneta run -f base.json [-f overrides.json ...]
    yuneta check -f base.json [-f ...]     (also every TLS listener's material: yuneta/check.py)
    yuneta install [--prefix DIR] [--dry-run] | yuneta uninstall [...]   (see yuneta/install.py)

A config error prints one line naming the file, the JSON path and the problem, and
exits 2 before anything starts.
"""

from __future__ import annotations

import argparse
import sys

from yuneta.config import load_config
from yuneta.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yuneta", description="Yuneta for Python")
    from yuneta.ycommand import version_line

    parser.add_argument("--version", action="version", version=version_line("yuneta"))
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (("run", "run a yuno"), ("check", "validate configs, start nothing")):
        p = sub.add_parser(verb, help=text)
        p.add_argument(
            "-f",
            "--config",
            action="append",
            required=True,
            metavar="FILE",
            help="JSON config file; repeat to merge later files over earlier ones",
        )
    from yuneta import install

    for verb, text in (
        ("install", "put the agent and the deploy hook on this host"),
        ("uninstall", "remove them, keeping certificates and state"),
    ):
        install.add_arguments(sub.add_parser(verb, help=text))
    args = parser.parse_args(argv)
    if args.verb in ("install", "uninstall"):
        return install.main(args.verb, args)
    # The product's gclasses register themselves on import; the kernel names none of them.
    import gclasses  # noqa: F401

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.verb == "check":
        from yuneta.check import check_config

        ok, lines = check_config(config)
        print(f"config {'OK' if ok else 'FAILED'}: {', '.join(args.config)}")
        for line in lines:
            print(f"  {line}")
        return 0 if ok else 2
    from yuneta.runtime import run_yuno

    return run_yuno(config)


if __name__ == "__main__":
    sys.exit(main())
