"""``python -m embedded.kafka``: run the broker until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import sys

from embedded.kafka.config import parse_args
from embedded.kafka.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("embedded.kafka.start").setLevel(logging.INFO)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency on Linux
        asyncio.run(serve_forever(config))
    else:
        uvloop.run(serve_forever(config))


if __name__ == "__main__":
    main()
