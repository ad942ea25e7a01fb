"""What the soak counts (messages, CPU) and the arithmetic of its report."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loadtest.common import CLK_TCK, machine_seconds, percentile
from scripts.run import PROCESSES

CALM_S = 60.0  # how long after a kill a message counts as "during recovery"


# CPU ----------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process on the machine."""
    out: dict[int, tuple[int, float]] = {}
    for entry_ in os.scandir("/proc"):
        if not entry_.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry_.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        out[int(entry_.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def tree_cpu(root: int, table: Mapping[int, tuple[int, float]]) -> float | None:
    """CPU seconds of a process and its live descendants (None if it is gone)."""
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class CpuLedger:
    """CPU seconds of each named process, summed per report window.

    At each sample, a process with the same pid as before is charged what it
    used since; a new pid (restarted by supervisord) is charged everything it
    used since it started. What a killed process used between its last sample
    and the kill is not seen (a sample is taken just before each kill).
    """

    def __init__(self, windows: int) -> None:
        self.windows = windows
        self.by_window: list[dict[str, float]] = [{} for _ in range(windows)]
        self.machine: list[float] = [0.0] * windows
        self.interrupts: list[float] = [0.0] * windows
        self.last: dict[str, tuple[int, float]] = {}
        self.last_machine: tuple[float, float] | None = None

    def sample(self, window: int, pids: Mapping[str, int]) -> None:
        table = _proc_table()
        w = min(max(window, 0), self.windows - 1)
        for name, pid in pids.items():
            if not pid:
                continue
            # The load generator's own process only: its descendants are the stack.
            cpu = table[pid][1] if name == "loadgen" and pid in table else tree_cpu(pid, table)
            if cpu is None:
                continue
            prev = self.last.get(name)
            used = cpu - prev[1] if prev is not None and prev[0] == pid else cpu
            self.last[name] = (pid, cpu)
            if window >= 0:
                self.by_window[w][name] = self.by_window[w].get(name, 0.0) + max(used, 0.0)
        busy, irq = machine_seconds()
        if self.last_machine is not None and window >= 0:
            self.machine[w] += busy - self.last_machine[0]
            self.interrupts[w] += irq - self.last_machine[1]
        self.last_machine = (busy, irq)


# Message accounting -------------------------------------------------------------
@dataclass
class Ledger:
    """Every message by key (sender index << 32 | its number): when it was composed,
    accepted and delivered, and under which ``seq`` it was delivered."""

    composed: dict[int, int] = field(default_factory=dict)  # key -> ns (monotonic)
    accepted: dict[int, int] = field(default_factory=dict)  # key -> first `accepted`, ns
    delivered: dict[int, int] = field(default_factory=dict)  # key -> first `message`, ns
    seq_of: dict[int, int] = field(default_factory=dict)  # key -> its seq
    duplicates: dict[int, list[int]] = field(default_factory=dict)  # key -> other seqs
    repeats: int = 0  # a seq pushed again (allowed: dropped by seq)
    by_sync: int = 0  # delivered first by a sync page rather than a push
    by_final_sync: int = 0  # ... by the last sync at the end
    foreign: int = 0  # a message that is not one of ours
    server_of: dict[int, str] = field(default_factory=dict)  # key -> its server_id
    # key -> other seqs under the same server_id: the message stored again after Redis
    # lost the hot inbox (docs/delivery.md, "Duplicates"); a client drops a server_id
    # it has (docs/protocol.md), as the SDK and the browser client do.
    restored: dict[int, list[int]] = field(default_factory=dict)

    def deliver(
        self, key: int, seq: int, server_id: str, now: int, *, via_sync: bool, final: bool
    ) -> None:
        known = self.seq_of.get(key)
        if known is None:
            self.seq_of[key] = seq
            self.server_of[key] = server_id
            self.delivered[key] = now
            if via_sync:
                self.by_sync += 1
            if final:
                self.by_final_sync += 1
        elif known == seq:
            self.repeats += 1
        elif server_id == self.server_of[key]:
            if seq not in self.restored.setdefault(key, []):
                self.restored[key].append(seq)
        elif seq not in self.duplicates.setdefault(key, []):
            self.duplicates[key].append(seq)


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 1)


def summarize(
    ledger: Ledger,
    cpu: CpuLedger,
    *,
    start_ns: int,
    window_s: float,
    windows: int,
    kills: list[dict[str, Any]],
    idle: Mapping[str, float] | None = None,
    calm_s: float = CALM_S,
) -> dict[str, Any]:
    """The per-window table, a per-minute series and the totals (pure arithmetic
    on what was recorded).

    ``idle``: each process's cores with every socket open and nothing sent;
    ``..._above_idle`` divides only the CPU above that by the messages.
    ``p99_calm``: messages composed ``calm_s`` or more after the last kill.
    """
    wns = int(window_s * 1e9)
    kill_ns = sorted(start_ns + int(k["at_s"] * 1e9) for k in kills)
    calm_ns = int(calm_s * 1e9)

    def calm(ns: int) -> bool:
        return not any(0 <= ns - k < calm_ns for k in kill_ns)

    def window_of(ns: int) -> int:
        return (ns - start_ns) // wns

    rows: list[dict[str, Any]] = []
    counts = [Counter[str]() for _ in range(windows)]
    acc_ns: list[list[float]] = [[] for _ in range(windows)]
    calm_acc: list[list[float]] = [[] for _ in range(windows)]
    minutes = max(1, math.ceil(windows * window_s / 60 - 1e-9))
    by_minute: list[list[float]] = [[] for _ in range(minutes)]
    e2e_ns: list[list[float]] = [[] for _ in range(windows)]
    delivered_in = [0] * windows
    for ns in ledger.delivered.values():
        w = window_of(ns)
        if 0 <= w < windows:
            delivered_in[w] += 1
    for key, composed in ledger.composed.items():
        w = min(max(window_of(composed), 0), windows - 1)
        row = counts[w]
        row["sent"] += 1
        accepted_at = ledger.accepted.get(key)
        got = ledger.delivered.get(key)
        if accepted_at is not None:
            row["accepted"] += 1
            if got is None:
                row["lost"] += 1
        if got is not None:
            row["delivered"] += 1
            e2e_ns[w].append(float(got - composed))
            if accepted_at is not None:
                # The recipient may see it a moment before the sender sees `accepted`.
                took = float(max(got - accepted_at, 0))
                acc_ns[w].append(took)
                if calm(composed):
                    calm_acc[w].append(took)
                by_minute[min(max((composed - start_ns) // 60_000_000_000, 0), minutes - 1)].append(
                    took
                )
        if key in ledger.duplicates:
            row["duplicates"] += 1
    for w, row in enumerate(counts):
        acc = sorted(acc_ns[w])
        e2e = sorted(e2e_ns[w])
        quiet = sorted(calm_acc[w])
        used = cpu.by_window[w]
        n = delivered_in[w]
        servers = sum(s for name, s in used.items() if name != "loadgen")
        idle_servers = sum(c for name, c in (idle or {}).items() if name != "loadgen")
        seconds = window_s
        rows.append(
            {
                "window": w,
                "minutes": [round(w * window_s / 60, 2), round((w + 1) * window_s / 60, 2)],
                **{k: row[k] for k in ("sent", "accepted", "delivered", "lost", "duplicates")},
                "accept_to_delivery_ms": {
                    "samples": len(acc),
                    "p50": _ms(percentile(acc, 50)),
                    "p99": _ms(percentile(acc, 99)),
                    "max": _ms(acc[-1] if acc else None),
                    "p99_calm": _ms(percentile(quiet, 99)),
                },
                "send_to_delivery_ms": {
                    "p50": _ms(percentile(e2e, 50)),
                    "p99": _ms(percentile(e2e, 99)),
                },
                "delivered_in_window": n,
                "kills": [k["process"] for k in kills if 0 <= k["at_s"] // window_s == w],
                "cpu_s": {name: round(s, 2) for name, s in sorted(used.items())},
                "cpu_us_per_msg": {
                    name: round(s * 1e6 / n, 1) if n else None for name, s in sorted(used.items())
                },
                "server_cpu_us_per_msg": round(servers * 1e6 / n, 1) if n else None,
                "server_cpu_us_per_msg_above_idle": (
                    round((servers - idle_servers * seconds) * 1e6 / n, 1)
                    if n and idle is not None
                    else None
                ),
                "machine_cores_busy": round(cpu.machine[w] / seconds, 2),
                "other_cores": round(
                    (cpu.machine[w] - cpu.interrupts[w] - sum(used.values())) / seconds, 2
                ),
            }
        )
    accepted = set(ledger.accepted)
    delivered = set(ledger.delivered)
    acc_all = sorted(
        float(max(ledger.delivered[k] - ledger.accepted[k], 0)) for k in accepted & delivered
    )
    lost = sorted(accepted - delivered)
    totals = {
        "sent": len(ledger.composed),
        "accepted": len(accepted),
        "delivered": len(delivered),
        "lost": len(lost),
        "duplicates": len(ledger.duplicates),
        "restored_copies": sum(len(seqs) for seqs in ledger.restored.values()),
        "never_accepted": len(set(ledger.composed) - accepted),
        "delivered_never_accepted": len(delivered - accepted),
        "repeated_pushes": ledger.repeats,
        "delivered_by_sync": ledger.by_sync,
        "delivered_by_final_sync": ledger.by_final_sync,
        "foreign": ledger.foreign,
        "accept_to_delivery_ms": {
            "p50": _ms(percentile(acc_all, 50)),
            "p99": _ms(percentile(acc_all, 99)),
            "max": _ms(acc_all[-1] if acc_all else None),
        },
    }
    series = []
    for m, values in enumerate(by_minute):
        values.sort()
        series.append({"minute": m, "samples": len(values), "p50": _ms(percentile(values, 50)),
                       "p99": _ms(percentile(values, 99))})  # fmt: skip
    return {
        "windows": rows,
        "per_minute_accept_to_delivery_ms": series,
        "idle_cores": dict(idle) if idle is not None else None,
        "totals": totals,
        "lost_keys": [split_key(k) for k in lost[:200]],
        "duplicate_keys": [
            {**split_key(k), "seqs": [ledger.seq_of[k], *seqs]}
            for k, seqs in list(ledger.duplicates.items())[:200]
        ],
    }


def split_key(key: int) -> dict[str, int]:
    return {"sender": key >> 32, "n": key & 0xFFFFFFFF}


# Output -------------------------------------------------------------------------
PROCESS_COLUMNS = (*(name for name, _ in PROCESSES), "loadgen")


def table(report: Mapping[str, Any]) -> str:
    """Markdown tables: messages and latency per window; CPU µs per message per window."""
    lines = [
        "| minutes | sent | accepted | delivered | lost | dup | acc→del p50 ms | p99 ms | max ms"
        " | p99 ms, >60 s after a kill | compose→del p99 ms | kills |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in report["windows"]:
        a, s = w["accept_to_delivery_ms"], w["send_to_delivery_ms"]
        lines.append(
            f"| {w['minutes'][0]:g}-{w['minutes'][1]:g} | {w['sent']} | {w['accepted']}"
            f" | {w['delivered']} | {w['lost']} | {w['duplicates']} | {a['p50']} | {a['p99']}"
            f" | {a['max']} | {a.get('p99_calm')} | {s['p99']} | {', '.join(w['kills']) or '-'} |"
        )
    t = report["totals"]
    lines += [
        "",
        f"Totals: sent {t['sent']}, accepted {t['accepted']}, delivered {t['delivered']},"
        f" **lost {t['lost']}**, **duplicates {t['duplicates']}**;"
        f" stored again after a Redis loss (same server_id, dropped by clients)"
        f" {t['restored_copies']};"
        f" never accepted {t['never_accepted']}; repeated pushes {t['repeated_pushes']};"
        f" resent (accepted ids) {t.get('resent_accepted')}, resent (unaccepted)"
        f" {t.get('resent_unaccepted')}; reconnects {t.get('reconnects')}"
        f" (forced {t.get('forced_reconnects')}); delivered first by sync"
        f" {t['delivered_by_sync']}.",
        "",
        "CPU µs per delivered message, per window (restarted processes counted from their start):",
        "",
        "| minutes | "
        + " | ".join(PROCESS_COLUMNS)
        + " | servers | servers above idle | machine cores | other cores |",
        "|---|" + "---|" * (len(PROCESS_COLUMNS) + 4),
    ]
    for w in report["windows"]:
        per = w["cpu_us_per_msg"]
        cells = [_cell(per.get(name)) for name in PROCESS_COLUMNS]
        lines.append(
            f"| {w['minutes'][0]:g}-{w['minutes'][1]:g} | "
            + " | ".join(cells)
            + f" | {_cell(w['server_cpu_us_per_msg'])}"
            f" | {_cell(w.get('server_cpu_us_per_msg_above_idle'))} | {w['machine_cores_busy']}"
            f" | {w['other_cores']} |"
        )
    idle = report.get("idle_cores")
    if idle:
        lines += [
            "",
            "Idle (every socket open, nothing sent), cores: "
            + ", ".join(f"{name} {idle[name]:.3f}" for name in PROCESS_COLUMNS if name in idle),
        ]
    if report.get("kills"):
        lines += [
            "",
            "| kill -9 | at (min) | back (s) | all /readyz 200 (s) |",
            "|---|---|---|---|",
        ]
        for k in report["kills"]:
            lines.append(
                f"| {k['process']} | {k['at_s'] / 60:.1f} | {k.get('restarted_s')}"
                f" | {k.get('ready_s')} |"
            )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
