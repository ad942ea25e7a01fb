"""The local SMTP sink (scripts/mailsink.py) keeps what it receives to its user: sign-in
codes and password-reset links are in those files."""

from __future__ import annotations

import os
import stat
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

from scripts.mailsink import MaildirHandler, close_up
from scripts.stack import _free_ports


async def test_mail_is_written_readable_by_its_user_only(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    maildir.mkdir(mode=0o700)
    old = os.umask(0o022)  # what a shell usually has: files 0644 by default
    [port] = _free_ports(1)
    controller = Controller(MaildirHandler(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "p@example.test", "a@example.test", "code"
        msg.set_content("Your sign-in code is 123456")
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=port)
    finally:
        controller.stop()
        os.umask(old)
    [mail] = list(maildir.glob("*.eml"))
    assert b"123456" in mail.read_bytes()
    mode: Any = stat.S_IMODE(mail.stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_a_maildir_of_before_is_closed_up_at_start(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    maildir.mkdir(mode=0o755)
    old = maildir / "000001-a@example.test.eml"
    old.write_bytes(b"Your sign-in code is 123456")
    old.chmod(0o644)
    close_up(maildir)
    assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
