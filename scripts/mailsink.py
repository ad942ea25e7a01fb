"""An SMTP sink for the embedded stack: a real SMTP server (aiosmtpd) on loopback.

Every message it receives is written to ``MAILDIR/<n>-<recipient>.eml`` and
one log line, so that a developer running ``make run`` can read a login code,
and tests can read what the auth service really sent over SMTP. A recipient
at a ``.invalid`` domain is refused (550), as a real server refuses an
unknown mailbox.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.counter = itertools.count(len(list(maildir.glob("*.eml"))) + 1)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        # A domain that cannot exist (RFC 2606's ``.invalid``) has no mailbox: refused
        # for good, as a real server refuses an unknown address.
        if address.lower().rstrip(">").endswith(".invalid"):
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            safe = re.sub(r"[^A-Za-z0-9@._-]", "_", rcpt)[:100]
            path = self.maildir / f"{next(self.counter):06d}-{safe}.eml"
            tmp = path.with_suffix(".tmp")
            # Sign-in codes and reset links: readable by this user only (as the secrets
            # in var/ are), whatever the umask.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a leftover .tmp of a crash keeps its mode otherwise
            with os.fdopen(fd, "wb") as out:
                out.write(envelope.original_content or envelope.content)
            tmp.rename(path)
            print(f"mail for {rcpt} -> {path}", flush=True)
        return "250 Message accepted for delivery"


def close_up(maildir: Path) -> None:
    """Make ``maildir`` readable by this user only, and what a sink of before left in it
    (made 0755, its mails 0644, until 2026-12-07)."""
    maildir.mkdir(mode=0o700, parents=True, exist_ok=True)
    maildir.chmod(0o700)
    for old in maildir.iterdir():
        old.chmod(0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args()
    close_up(args.maildir)
    controller = Controller(MaildirHandler(args.maildir), hostname=args.host, port=args.port)
    controller.start()
    print(f"smtp sink on {args.host}:{args.port}, mail in {args.maildir}", flush=True)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
