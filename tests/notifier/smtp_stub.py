"""A tiny SMTP server on loopback for the notifier's tests, on asyncio alone: it answers
``MAIL``, ``RCPT`` and the end of ``DATA`` with the codes it is told (the stack's sink,
scripts/mailsink.py, accepts every message and refuses only ``.invalid`` addresses), keeps
every message it is given (parsed, and the bytes as they came) with its envelope's
addresses, and can run a hook while the client waits for its answer to
``DATA`` (to write something while a digest is being sent). ``rcpt_code_of`` and
``data_code_of``, when given, answer each recipient or message on its own (a relay
that refuses one mailbox, or one message's content, and takes the others)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

HOST = "127.0.0.1"


class SmtpStub:
    def __init__(
        self,
        *,
        mail_code: int = 250,
        rcpt_code: int = 250,
        data_code: int = 250,
        on_data: Callable[[EmailMessage], Awaitable[None]] | None = None,
        rcpt_code_of: Callable[[str], int] | None = None,
        data_code_of: Callable[[EmailMessage], int] | None = None,
    ) -> None:
        self.mail_code = mail_code
        self.rcpt_code = rcpt_code
        self.data_code = data_code  # the answer to the message (after its final ".")
        self.on_data = on_data
        self.rcpt_code_of = rcpt_code_of
        self.data_code_of = data_code_of
        self.mail_from: list[float] = []  # when each MAIL came
        self.senders: list[str] = []  # the envelope: each MAIL FROM's address
        self.recipients: list[str] = []  # and each RCPT TO's
        self.messages: list[EmailMessage] = []  # every message given, accepted or not
        self.raw: list[bytes] = []  # the same, as the bytes that came
        self.data_at: list[float] = []  # when each came (time.monotonic())
        self.accepted: list[EmailMessage] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()

    def settings_update(self) -> dict[str, Any]:
        return {"smtp_host": HOST, "smtp_port": self.port, "smtp_tls": False}

    async def __aenter__(self) -> SmtpStub:
        self._server = await asyncio.start_server(self._session, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say("220 stub ESMTP")
        while line := await reader.readline():
            verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
            address = line.decode(errors="replace").partition("<")[2].partition(">")[0]
            if verb in ("EHLO", "HELO"):
                await say("250 stub")
            elif verb == "MAIL":
                self.mail_from.append(time.monotonic())
                self.senders.append(address)
                await say(f"{self.mail_code} {'OK' if self.mail_code < 400 else 'sender refused'}")
            elif verb == "RCPT":
                self.recipients.append(address)
                code = self.rcpt_code_of(address) if self.rcpt_code_of else self.rcpt_code
                await say(f"{code} {'OK' if code < 400 else 'no mailbox'}")
            elif verb == "DATA":
                await say("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := await reader.readline()) != b".\r\n":
                    if not data:
                        return
                    lines.append(data[1:] if data.startswith(b".") else data)
                raw = b"".join(lines)
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                self.messages.append(msg)
                self.raw.append(raw)
                self.data_at.append(time.monotonic())
                if self.on_data is not None:
                    await self.on_data(msg)
                code = self.data_code_of(msg) if self.data_code_of else self.data_code
                if code < 400:
                    self.accepted.append(msg)
                await say(f"{code} {'accepted' if code < 400 else 'message refused'}")
            elif verb in ("RSET", "NOOP"):
                await say("250 OK")
            elif verb == "QUIT":
                await say("221 bye")
                return
            else:
                await say("502 not implemented")
