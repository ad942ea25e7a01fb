"""Assemble the static site CloudFront serves (deploy.yml, after ``npm run build`` in web/).

    python3 scripts/web_site.py --api-url https://api.example.com OUT

OUT gets the web client (web/chat/dist) at ``/``, the admin console
(web/admin/dist) at ``/admin/``, and the two config files that tell them where
the APIs are: ``/config.json`` (``api_url``: the chat's calls and its WebSocket)
and ``/admin/config.json`` (the OpenID provider, the console's client id, and
``api_url``). Locally HAProxy serves apps and APIs on one origin and the web
service writes the console's config itself; on AWS the apps are on CloudFront's
domain and the APIs on the ALB's, which lets the web domain call it
(``PARLEY_CORS_ORIGINS``, set by Terraform).

Standard library only: the deploy job runs it without the project's packages.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_CLIENT_ID = "parley-admin"
"""The console's OAuth client (services/web/app.py ``APPS``; auth registers it)."""

ORIGIN = re.compile(r"^https?://[^/?#]+/?$")


def assemble(api_url: str, out: Path, web: Path = ROOT / "web") -> None:
    if not ORIGIN.match(api_url):
        raise ValueError(f"--api-url must be an origin (https://host), not {api_url!r}")
    api = api_url.rstrip("/")
    chat, admin = web / "chat" / "dist", web / "admin" / "dist"
    for dist in (chat, admin):
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"{dist} is not built: run `npm ci && npm run build` in web/")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(chat, out)
    shutil.copytree(admin, out / "admin")
    (out / "config.json").write_text(json.dumps({"api_url": api}) + "\n", encoding="utf-8")
    console = {"authority": api, "client_id": ADMIN_CLIENT_ID, "api_url": api}
    (out / "admin" / "config.json").write_text(json.dumps(console) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True, help="the APIs' origin (the ALB's URL)")
    parser.add_argument("out", type=Path, help="the directory to write (replaced)")
    args = parser.parse_args(argv)
    try:
        assemble(args.api_url, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"web_site: {exc}", file=sys.stderr)
        return 2
    print(f"web_site: {args.out} (APIs at {args.api_url.rstrip('/')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
