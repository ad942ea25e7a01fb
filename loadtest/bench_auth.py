"""Auth benchmark: token verifications/s and logins/s, each beside its baseline.

``python -m loadtest.bench_auth [--verify-seconds 3 --login-seconds 10 --concurrency 4] [--json]``

Everything runs in this one process, one measurement after the other, so that
each figure sits next to the primitive it is bound by:

1. **Token verification** (no server): the shared ``TokenVerifier.verify``
   of services/common on an access token shaped exactly as the auth service
   issues it (EdDSA, the same claims), its JWKS already cached, against
   - raw Ed25519 ``verify`` (``cryptography``) of the same signature over the
     same signing input: the floor;
   - ``jwt.decode`` (PyJWT) with the same options: what a verifier without our
     header checks and claim mapping costs.
   Plus ``verify`` + ``check_not_revoked`` (one pipelined Redis round trip on
   loopback), what every authenticated request of every service pays.
2. **Logins** (argon2-bound): the auth service (``create_app``, **production
   argon2id parameters**: t=3, m=64 MiB, p=4 unless overridden by PARLEY_ARGON2_*)
   served on a loopback port from this process, on its own embedded MongoDB and
   Redis started on free ports; ``--concurrency`` clients log in over HTTP in a
   loop (username + password -> tokens: one argon2id verification, a session, a
   refresh token and a signed JWT each), against
   - raw argon2id ``verify`` with the same parameters and the same number of
     threads, no HTTP, no database: the floor a login cannot beat;
   - raw argon2id ``hash`` on one thread (what one sign-up or password change costs).

docs/BENCHMARKS.md ("## Auth") has the figures and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from aiohttp import web
from argon2 import PasswordHasher, Type
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from loadtest.common import CpuMeter, percentile
from scripts.stack import Processes, StackConfig
from services.auth.app import create_app
from services.auth.config import AuthSettings
from services.common.auth import ALGORITHMS, TokenVerifier, check_not_revoked
from services.common.clients import redis_client
from services.common.config import Settings, load_settings

PASSWORD = "benchmark passphrase 2026"
ROOMY_LIMITS = {
    "limit_login_ip": "1000000/60",
    "limit_login_failures": "1000000/60",
    "limit_signup_ip": "1000000/60",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds else 0.0


def timed_loop(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        if time.perf_counter() >= deadline:
            return n, time.perf_counter() - t0


async def timed_async(fn: Callable[[], Awaitable[object]], seconds: float) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            await fn()
        n += 100
        if time.perf_counter() >= deadline:
            return n, time.perf_counter() - t0


def access_token(key: Ed25519PrivateKey, kid: str, settings: Settings) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex, "roles": ["user"], "amr": ["pwd"], "jti": uuid.uuid4().hex,
        "iat": now, "exp": now + 900,
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


async def bench_verify(settings: Settings, seconds: float) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    kid = "bench"
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    jwks = {"keys": [{**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}]}
    token = access_token(key, kid, settings)
    signing_input, _, sig_b64 = token.rpartition(".")
    signature = jwt.utils.base64url_decode(sig_b64)
    message = signing_input.encode()

    async def loader() -> dict[str, Any]:
        return jwks

    verifier = TokenVerifier(settings, jwks_loader=loader)
    await verifier.verify(token)  # warm: JWKS cached

    out: dict[str, Any] = {}
    n, s = timed_loop(lambda: public.verify(signature, message), seconds)
    out["raw_ed25519_verify_per_s"] = rate(n, s)
    opts = {"require": ["exp", "iat", "sub", "sid", "jti", "iss", "aud"]}

    def pyjwt() -> None:
        jwt.decode(
            token, public, algorithms=ALGORITHMS, audience=settings.jwt_audience,
            issuer=settings.jwt_issuer, options=opts, leeway=5,  # type: ignore[arg-type]
        )  # fmt: skip

    n, s = timed_loop(pyjwt, seconds)
    out["pyjwt_decode_per_s"] = rate(n, s)
    n, s = await timed_async(lambda: verifier.verify(token), seconds)
    out["token_verifier_per_s"] = rate(n, s)
    out["token_verifier_us"] = round(s / n * 1e6, 1)

    redis = redis_client(settings)
    try:
        claims = await verifier.verify(token)

        async def with_revocation() -> None:
            c = await verifier.verify(token)
            await check_not_revoked(redis, settings.redis_prefix, c)

        await check_not_revoked(redis, settings.redis_prefix, claims)
        n, s = await timed_async(with_revocation, seconds)
        out["verify_plus_revocation_check_per_s"] = rate(n, s)
    finally:
        await redis.aclose()
        await verifier.close()
    return out


def bench_argon2(cfg: AuthSettings, seconds: float, threads: int) -> dict[str, Any]:
    ph = PasswordHasher(
        time_cost=cfg.argon2_time_cost, memory_cost=cfg.argon2_memory_kib,
        parallelism=cfg.argon2_parallelism, hash_len=32, salt_len=16, type=Type.ID,
    )  # fmt: skip
    stored = ph.hash(PASSWORD)

    def count(fn: Callable[[], object], workers: int) -> tuple[int, float]:
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()

        def worker() -> int:
            k = 0
            while time.perf_counter() < deadline:
                fn()
                k += 1
            return k

        with ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(lambda _: worker(), range(workers)))
        return total, time.perf_counter() - t0

    n, s = count(lambda: ph.hash(PASSWORD), 1)
    hash_1 = rate(n, s)
    n, s = count(lambda: ph.verify(stored, PASSWORD), 1)
    verify_1 = rate(n, s)
    cpu0 = time.process_time()
    n, s = count(lambda: ph.verify(stored, PASSWORD), threads)
    cpu_ms = (time.process_time() - cpu0) * 1000 / n if n else None
    return {
        "raw_argon2_verify_cpu_ms": round(cpu_ms, 1) if cpu_ms else None,
        "raw_argon2_hash_per_s_1_thread": hash_1,
        "raw_argon2_verify_per_s_1_thread": verify_1,
        f"raw_argon2_verify_per_s_{threads}_threads": rate(n, s),
        "raw_argon2_verify_ms": round(1000 / verify_1, 1) if verify_1 else None,
    }


async def bench_login(
    settings: Settings,
    cfg: AuthSettings,
    seconds: float,
    concurrency: int,
    users: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    app = await create_app(settings, cfg)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    names = [f"bench{uuid.uuid4().hex[:8]}" for _ in range(users)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for name in names:  # set-up, not measured
                body = {"username": name, "email": f"{name}@bench.test", "password": PASSWORD}
                async with http.post(f"{base}/auth/v1/signup", json=body) as resp:
                    assert resp.status == 201, await resp.text()
            count = 0
            meter = CpuMeter(pids)
            meter.start()
            stop = time.perf_counter() + seconds
            t0 = time.perf_counter()

            async def worker(i: int) -> None:
                nonlocal count
                name = names[i % len(names)]
                body = {"username": name, "password": PASSWORD}
                while time.perf_counter() < stop:
                    start = time.perf_counter()
                    async with http.post(f"{base}/auth/v1/login", json=body) as resp:
                        data = await resp.read()
                    if resp.status == 200:
                        count += 1
                        latencies.append((time.perf_counter() - start) * 1000)
                    else:
                        code = orjson.loads(data).get("error", {}).get("code", str(resp.status))
                        errors[code] = errors.get(code, 0) + 1

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            elapsed = time.perf_counter() - t0
            cpu = meter.stop()
    finally:
        await runner.cleanup()
    lat = sorted(latencies)
    return {
        "logins": count,
        "seconds": round(elapsed, 2),
        "logins_per_s": rate(count, elapsed),
        "latency_ms_p50": round(percentile(lat, 50) or 0, 1),
        "latency_ms_p99": round(percentile(lat, 99) or 0, 1),
        "errors": errors,
        "cpu_ms_per_login": {
            name: round(sec * 1000 / count, 1) if count else None for name, sec in cpu.items()
        },
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    cfg = StackConfig.free_ports(data_dir)
    procs = Processes(cfg)
    try:
        log("starting MongoDB (nx-27017) and Redis on free ports ...")
        procs.start("mongo")
        procs.start("redis")
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        settings = load_settings(
            mongo_url=cfg.url("mongo"), redis_url=cfg.url("redis"),
            db_prefix=f"{prefix}_", redis_prefix=prefix, log_level="WARNING",
            # Sealed keys, as in production (the auth service requires a secret).
            key_encryption_secret=secrets.token_urlsafe(32),
        )  # fmt: skip
        auth_cfg = AuthSettings(**ROOMY_LIMITS)
        results: dict[str, Any] = {
            "machine": machine(),
            "argon2": {
                "time_cost": auth_cfg.argon2_time_cost,
                "memory_kib": auth_cfg.argon2_memory_kib,
                "parallelism": auth_cfg.argon2_parallelism,
            },
        }
        log("1/3 token verification ...")
        results["verify"] = await bench_verify(settings, args.verify_seconds)
        log("2/3 raw argon2id ...")
        results["argon2_baseline"] = await asyncio.to_thread(
            bench_argon2, auth_cfg, args.argon2_seconds, args.concurrency
        )
        log(f"3/3 logins over HTTP, {args.concurrency} clients ...")
        pids = {
            "auth+clients": os.getpid(),
            "mongo": procs.procs["mongo"].pid,
            "redis": procs.procs["redis"].pid,
        }
        results["login"] = await bench_login(
            settings, auth_cfg, args.login_seconds, args.concurrency, args.users, pids
        )
        return results
    finally:
        await asyncio.to_thread(procs.stop_all)


def markdown(r: dict[str, Any], command: str) -> str:
    """The "## Auth" section of docs/BENCHMARKS.md."""
    v, a, lg, m, ag = r["verify"], r["argon2_baseline"], r["login"], r["machine"], r["argon2"]
    threads_key = next(k for k in a if k.endswith("_threads"))
    threads = threads_key.split("_")[-2]
    verify_ratio = v["token_verifier_per_s"] / v["raw_ed25519_verify_per_s"]
    login_ratio = lg["logins_per_s"] / a[threads_key] if a[threads_key] else 0.0
    login_cpu = sum(v for v in lg["cpu_ms_per_login"].values() if v)
    argon_cpu = a["raw_argon2_verify_cpu_ms"] or 0.0
    argon_share = argon_cpu / login_cpu if login_cpu else 0.0
    return "\n".join(
        [
            "## Auth",
            "",
            "Token verification (the shared `services.common.auth.TokenVerifier`, what every",
            "service runs on every request) and logins (the auth service over HTTP, argon2id",
            "at the production parameters), each beside the primitive it is bound by, all",
            "measured in one process, one after the other. Logins run against the service",
            "from `create_app` on its own embedded MongoDB (nx-27017) and Redis.",
            "",
            "```",
            command,
            "```",
            "",
            f"Run {r['at']} on {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}; load "
            f"average {m['load_avg_1m_at_start']} at start (the machine is shared with other "
            "work: expect +-30 % between runs).",
            "",
            "| what | per second | note |",
            "|---|---|---|",
            f"| baseline: raw Ed25519 verify | {v['raw_ed25519_verify_per_s']:,} | "
            "`cryptography`, same signature and input |",
            f"| baseline: PyJWT `jwt.decode` | {v['pyjwt_decode_per_s']:,} | "
            "same key and options |",
            f"| `TokenVerifier.verify` | {v['token_verifier_per_s']:,} | "
            f"{v['token_verifier_us']} us each, JWKS cached |",
            f"| `verify` + `check_not_revoked` | {v['verify_plus_revocation_check_per_s']:,} | "
            "plus one pipelined Redis round trip |",
            f"| baseline: raw argon2id hash, 1 thread | {a['raw_argon2_hash_per_s_1_thread']} | "
            f"t={ag['time_cost']}, m={ag['memory_kib']} KiB, p={ag['parallelism']} |",
            f"| baseline: raw argon2id verify, 1 thread | {a['raw_argon2_verify_per_s_1_thread']} "
            f"| {a['raw_argon2_verify_ms']} ms each |",
            f"| baseline: raw argon2id verify, {threads} threads | {a[threads_key]} | "
            f"the floor for logins; {a['raw_argon2_verify_cpu_ms']} ms CPU each |",
            f"| login over HTTP, {threads} clients | {lg['logins_per_s']} | "
            f"{lg['logins']} in {lg['seconds']} s; p50 {lg['latency_ms_p50']} ms, "
            f"p99 {lg['latency_ms_p99']} ms; errors: {lg['errors'] or 'none'}; CPU ms each: "
            + ", ".join(f"{k} {v}" for k, v in lg["cpu_ms_per_login"].items())
            + " |",
            "",
            f"The verifier runs at {verify_ratio:.2f}x raw Ed25519: the rest is PyJWT's",
            "base64/JSON/claim checks (the verifier adds a header parse and the key look-up",
            f"on top of `jwt.decode`). Logins run at {login_ratio:.2f}x the raw argon2id",
            "verifications the same number of threads manage. CPU time is the steadier",
            f"measure on a shared machine: a login costs {login_cpu:.0f} ms of CPU in all",
            f"(this process, MongoDB, Redis), of which {argon_cpu:.0f} ms is the argon2id",
            f"verification ({argon_share:.0%}); the rest is HTTP (client and server), the",
            "JWT signature, three Redis round trips (limits) and the session and",
            f"refresh-token inserts ({lg['cpu_ms_per_login'].get('mongo')} ms in MongoDB).",
            "Login capacity scales with auth processes (they share keys and limits);",
            "verification runs in every service without calling auth.",
            "",
        ]
    )


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the "## Auth" section of a markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "## Auth"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Parley auth benchmark")
    p.add_argument("--verify-seconds", type=float, default=3.0)
    p.add_argument("--argon2-seconds", type=float, default=5.0)
    p.add_argument("--login-seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    p.add_argument("--write", type=Path, help="replace the '## Auth' section of this file")
    args = p.parse_args(argv)
    command = "python -m loadtest.bench_auth " + " ".join(argv or sys.argv[1:])
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    with tempfile.TemporaryDirectory(prefix="parley-bench-auth-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    results["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    section = markdown(results, command.strip())
    if args.write:
        write_section(args.write, section)
        log(f"wrote the '## Auth' section of {args.write}")
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(section)


if __name__ == "__main__":
    main()
