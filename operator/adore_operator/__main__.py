"""`adore-operator`: run the kopf operator (all namespaces unless --namespace is given)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    import kopf

    ap = argparse.ArgumentParser(prog="adore-operator")
    ap.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (repeatable)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import handlers  # noqa: F401  (registers the handlers)

    asyncio.run(kopf.operator(standalone=True, namespaces=args.namespace or None, clusterwide=not args.namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
