"""``make run``: every process under honcho, then wait until all are ready.

honcho (the process manager) starts the Procfile; this wrapper waits until
each service's ``/readyz`` answers 200 *through HAProxy*, prints the URLs, and
on Ctrl-C or SIGTERM lets honcho stop everything cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from scripts.stack import ROOT, StackConfig

CHECKS = ("/auth/readyz", "/keys/readyz", "/gateway/readyz", "/delivery/readyz")


def ready(base: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(base + path, timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    cfg = StackConfig.from_env()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    honcho = subprocess.Popen(
        [os.path.join(bin_dir, "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
        env=env,
        start_new_session=False,
    )

    def forward(sig: int, _frame: object) -> None:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM if sig == signal.SIGTERM else signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    base = cfg.url("lb")
    deadline = time.monotonic() + float(os.environ.get("PARLEY_START_TIMEOUT", "90"))
    pending = list(CHECKS)
    while pending and honcho.poll() is None:
        pending = [p for p in pending if not ready(base, p)]
        if pending and time.monotonic() > deadline:
            print(f"parley: not ready after timeout: {', '.join(pending)}", flush=True)
            honcho.send_signal(signal.SIGINT)
            honcho.wait()
            return 1
        if pending:
            time.sleep(0.5)
    if honcho.poll() is None:
        print("\n" + "=" * 64, flush=True)
        print(f"Parley is up. Load balancer: {base}", flush=True)
        print(f"  WebSocket:   ws://{cfg.host}:{cfg.lb_port}/ws", flush=True)
        for svc in ("auth", "keys", "gateway", "delivery"):
            print(f"  {svc:9} {base}/{svc}/docs  (readyz: {base}/{svc}/readyz)", flush=True)
        print(f"  HAProxy stats: http://{cfg.host}:{cfg.stats_port}/stats", flush=True)
        print(f"  Mail sink:   {cfg.data_dir / 'mail'}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        print("=" * 64 + "\n", flush=True)
    return honcho.wait()


if __name__ == "__main__":
    sys.exit(main())
