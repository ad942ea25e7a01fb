"""Parley's Grafana dashboards, as code (grafana-foundation-sdk).

    python -m deploy.grafana.dashboards          # write deploy/grafana/*.json
    python -m deploy.grafana.dashboards --check  # exit 1 if a committed file is stale

docker-compose's Grafana loads every JSON file of this folder
(deploy/compose/grafana/provisioning/dashboards/parley.yml); they all use the
Prometheus datasource of uid ``prometheus``. What each dashboard shows, and the
metrics behind it, is in docs/operations.md. tests/ops/test_prometheus.py runs
every panel's query against a real Prometheus scraping the test stack, and
tests/ops/test_dashboards.py fails when the committed JSON is stale.

Queries use ``$__rate_interval`` (Grafana picks it from the scrape interval);
the tests substitute a fixed window. Every delivery replica samples the same
consumer lag: lag queries take the ``max`` per partition before summing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="prometheus")
R = "$__rate_interval"
SERVICES = ("auth", "keys", "gateway", "delivery", "web", "rooms", "notifier")
# Messages delivered: items acknowledged, by delivery or by a gateway's direct ack
# (docs/delivery.md, "Acks"); ``or vector(0)``: a side with no series yet is 0.
DELIVERED = (
    f"(sum(rate(parley_delivery_acked_total[{R}])) or vector(0))"
    f" + (sum(rate(parley_gateway_acked_total[{R}])) or vector(0))"
)
# Operational routes (the probes: HAProxy's /healthz, the ALB's /startedz, /readyz,
# Prometheus's /metrics) and the WebSocket (a "request" as long as its connection,
# served as /ws and /gateway/ws) are left out of latency: they would hide the routes
# users wait for. The same filter as the HTTP alerts of deploy/prometheus/alerts.yml;
# Prometheus anchors the regex, so each route must match it whole.
NOT_TIMED = 'route!~"(/gateway)?/ws|.*/(healthz|startedz|readyz|metrics)"'
TAGS = ["parley"]


@dataclass(frozen=True)
class Q:
    """One query of a panel, and the legend of its series."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class P:
    """One panel: a time series (default) or a stat."""

    title: str
    description: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8


Row = tuple[str, list[P]]


def panel(p: P, panel_id: int) -> Any:
    builder: Any = timeseries.Panel() if p.kind == "timeseries" else stat.Panel()
    builder = (
        builder.id(panel_id)
        .title(p.title)
        .description(p.description)
        .datasource(DS)
        .unit(p.unit)
        .span(p.width)
        .height(p.height)
    )
    if p.kind == "timeseries":
        builder = (
            builder.fill_opacity(10)
            .line_width(1)
            .legend(
                gc.VizLegendOptions()
                .show_legend(True)
                .display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM)
            )
            .tooltip(
                gc.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE)
            )
        )
    else:
        builder = (
            builder.graph_mode(cm.BigValueGraphMode.AREA)
            .color_mode(cm.BigValueColorMode.VALUE)
            .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    for i, q in enumerate(p.queries):
        target = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i))
        if q.legend:
            target = target.legend_format(q.legend)
        builder = builder.with_target(target)
    return builder


def build(uid: str, title: str, description: str, rows: list[Row]) -> dict[str, Any]:
    board = (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )
    next_id = 1
    for row_title, panels in rows:
        board = board.with_row(gd.Row(row_title).id(next_id))
        next_id += 1
        for p in panels:
            board = board.with_panel(panel(p, next_id))
            next_id += 1
    doc: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return doc


# Panels shared by the per-service dashboards --------------------------------


def http_row(svc: str) -> Row:
    sel = f'service="{svc}"'
    return (
        "HTTP",
        [
            P("Requests by route", "HTTP requests per second, by route and status.",
              (Q(f"sum by (route, status) (rate(parley_http_requests_total{{{sel}}}[{R}]))",
                 "{{route}} {{status}}"),), "reqps"),
            P("5xx by route", "Server errors per second, by route (0 when there are none).",
              (Q(f'sum by (route) (rate(parley_http_requests_total{{{sel},status=~"5.."}}[{R}]))'
                 f" or sum by (route) (rate(parley_http_requests_total{{{sel}}}[{R}])) * 0",
                 "{{route}}"),), "reqps"),
            P("Latency p50 / p99 by route",
              "Request latency percentiles per route (operational routes left out).",
              (Q(f"histogram_quantile(0.99, sum by (route, le) (rate("
                 f"parley_http_request_duration_seconds_bucket{{{sel},{NOT_TIMED}}}[{R}])))",
                 "p99 {{route}}"),
               Q(f"histogram_quantile(0.5, sum by (route, le) (rate("
                 f"parley_http_request_duration_seconds_bucket{{{sel},{NOT_TIMED}}}[{R}])))",
                 "p50 {{route}}")), "s", width=24),
        ],
    )  # fmt: skip


def process_row(job: str) -> Row:
    sel = f'job="{job}"'
    return (
        "Process",
        [
            P("CPU", "CPU seconds per second used by each process (1 = one core).",
              (Q(f"rate(process_cpu_seconds_total{{{sel}}}[{R}])", "{{instance}}"),),
              "percentunit", width=8),
            P("Memory (RSS)", "Resident memory of each process.",
              (Q(f"process_resident_memory_bytes{{{sel}}}", "{{instance}}"),), "bytes", width=8),
            P("Open file descriptors", "Open descriptors against the process's limit "
              "(each socket is one).",
              (Q(f"process_open_fds{{{sel}}}", "open {{instance}}"),
               Q(f"process_max_fds{{{sel}}}", "limit {{instance}}")), width=8),
        ],
    )  # fmt: skip


def limits_panel(svc: str) -> P:
    return P(
        "Rate-limit refusals",
        "Requests refused by a rate limit (rate_limited) or a lockout (account_locked), by rule.",
        (Q(f'sum by (rule, code) (rate(parley_rate_limit_refusals_total{{service="{svc}"}}[{R}]))',
           "{{rule}} {{code}}"),),
        "reqps",
    )  # fmt: skip


# The dashboards ----------------------------------------------------------------


def overview() -> dict[str, Any]:
    up = 'up{job=~"auth|keys|gateway|delivery|web|rooms|notifier|haproxy"}'
    rows: list[Row] = [
        ("Health", [
            P("Targets up", "Scraped processes that answer, per job (gateway: one per pod).",
              (Q(f"sum by (job) ({up})", "{{job}}"),), kind="stat", width=24, height=4),
        ]),
        ("Traffic", [
            P("Requests per second", "HTTP requests per second, per service.",
              (Q(f"sum by (service) (rate(parley_http_requests_total[{R}]))", "{{service}}"),),
              "reqps", width=8),
            P("Error ratio (5xx)", "Share of each service's requests answered with a 5xx "
              "(0 when there are none), as the alert counts them: probes and the "
              "WebSocket left out. Alert: ParleyHigh5xxRate above 5%.",
              (Q("sum by (service) (rate(parley_http_requests_total"
                 f'{{status=~"5..",{NOT_TIMED}}}[{R}]))'
                 f" / sum by (service) (rate(parley_http_requests_total{{{NOT_TIMED}}}[{R}]))"
                 f" or sum by (service) (rate(parley_http_requests_total[{R}])) * 0",
                 "{{service}}"),), "percentunit", width=8),
            P("Latency p99", "99th percentile of HTTP latency per service, operational "
              "routes and the WebSocket left out. Alert: ParleyHighP99Latency above 500 ms.",
              (Q(f"histogram_quantile(0.99, sum by (service, le) (rate("
                 f"parley_http_request_duration_seconds_bucket{{{NOT_TIMED}}}[{R}])))",
                 "{{service}}"),), "s", width=8),
        ]),
        ("Messaging", [
            P("Messages per second", "Accepted by a gateway (the broker acknowledged), "
              "stored in an inbox by delivery, delivered (acknowledged by the recipient).",
              (Q(f'sum(rate(parley_gateway_frames_out_total{{op="accepted"}}[{R}]))', "accepted"),
               Q(f'sum(rate(parley_delivery_stored_total{{kind="message"}}[{R}]))', "stored"),
               Q(DELIVERED, "delivered")), "ops", width=8),
            P("End-to-end latency", "From the gateway's accept to delivery publishing the "
              "frame to the recipient's gateway (p50, p99).",
              (Q(f"histogram_quantile(0.5, sum by (le) (rate("
                 f"parley_delivery_e2e_latency_seconds_bucket[{R}])))", "p50"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_delivery_e2e_latency_seconds_bucket[{R}])))", "p99")), "s", width=8),
            P("WebSocket connections", "Open authenticated sockets per gateway pod (the "
              "autoscaling signal) and in total.",
              (Q("sum by (gateway) (parley_gateway_connections)", "{{gateway}}"),
               Q("sum(parley_gateway_connections)", "total")), width=8),
            P("Kafka consumer lag", "Records each consumer group has still to read "
              "(end offset - committed offset), summed over partitions.",
              (Q("sum by (group) (max by (group, topic, partition) (parley_kafka_consumer_lag))",
                 "{{group}}"),), width=24),
        ]),
    ]  # fmt: skip
    about = "Traffic, errors, latency, connections and lag across Parley."
    return build("parley-overview", "Parley overview", about, rows)


def auth() -> dict[str, Any]:
    rows: list[Row] = [
        http_row("auth"),
        ("Sign-in", [
            P("Login failures", "Wrong passwords and wrong second-factor codes per second.",
              (Q(f"sum by (factor) (rate(parley_auth_login_failures_total[{R}]))",
                 "{{factor}}"),), "ops", width=8),
            P("Lockouts started", "Accounts locked after too many failures, by rule "
              "(login_failures, code_failures).",
              (Q("sum by (rule) (increase("
                 f'parley_rate_limit_lockouts_total{{service="auth"}}[{R}]))',
                 "{{rule}}"),), width=8),
            P("E-mails", "E-mails handed to the SMTP server (sent) or not (failed), by kind. "
              "Alert: ParleyEmailFailures.",
              (Q(f"sum by (kind, result) (rate(parley_auth_emails_total[{R}]))",
                 "{{kind}} {{result}}"),), "ops", width=8),
            limits_panel("auth"),
        ]),
        process_row("auth"),
    ]  # fmt: skip
    about = "Accounts, sign-in, lockouts, e-mail and the auth service's HTTP API."
    return build("parley-auth", "Parley auth", about, rows)


def keys() -> dict[str, Any]:
    rows: list[Row] = [
        http_row("keys"),
        ("Prekeys", [
            P("Bundles claimed", "Bundles handed out per second, by whether they carried a "
              "one-time X25519 prekey and which ML-KEM prekey. Alert: ParleyPrekeysExhausted.",
              (Q(f"sum by (one_time, kem) (rate(parley_keys_bundles_claimed_total[{R}]))",
                 "one-time={{one_time}} kem={{kem}}"),), "ops", width=8),
            P("One-time stock left at claim", "Prekeys a device has left right after a claim "
              "(p10 and p50 of the claims in the window), by kind.",
              (Q(f"histogram_quantile(0.1, sum by (kind, le) (rate("
                 f"parley_keys_prekey_stock_bucket[{R}])))", "p10 {{kind}}"),
               Q(f"histogram_quantile(0.5, sum by (kind, le) (rate("
                 f"parley_keys_prekey_stock_bucket[{R}])))", "p50 {{kind}}")), width=8),
            P("prekeys_low events", "Devices told to refill their prekeys, per second.",
              (Q(f"sum(rate(parley_keys_prekeys_low_total[{R}]))", "prekeys_low"),), "ops",
              width=8),
            limits_panel("keys"),
        ]),
        process_row("keys"),
    ]  # fmt: skip
    about = "The key directory: claims, prekey stock and its HTTP API."
    return build("parley-keys", "Parley keys", about, rows)


def gateway() -> dict[str, Any]:
    rows: list[Row] = [
        ("Connections", [
            P("Open sockets per pod", "Authenticated WebSockets per pod, and the capacity "
              "each pod is sized for (PARLEY_WS_CAPACITY).",
              (Q("sum by (gateway) (parley_gateway_connections)", "{{gateway}}"),
               Q("max(parley_gateway_connection_capacity)", "capacity")), width=8),
            P("Capacity used", "Open sockets / capacity, per pod. Alert: "
              "ParleyGatewayAtCapacity at 90%.",
              (Q("max by (gateway) (parley_gateway_connections"
                 " / parley_gateway_connection_capacity)",
                 "{{gateway}}"),), "percentunit", width=8),
            P("Connects and disconnects", "WebSocket upgrades and closes per second, per pod.",
              (Q(f"sum by (instance) (rate(parley_gateway_connects_total[{R}]))",
                 "connects {{instance}}"),
               Q(f"sum by (instance) (rate(parley_gateway_disconnects_total[{R}]))",
                 "disconnects {{instance}}")), "ops", width=8),
            P("Close codes", "Sockets closed per second by WebSocket close code (1000 normal, "
              "1001 going away, 1006 dropped, 4xxx Parley's codes in docs/protocol.md).",
              (Q(f"sum by (code) (rate(parley_gateway_disconnects_total[{R}]))", "{{code}}"),),
              "ops"),
            P("Connection duration p50 / p99", "How long sockets stayed open.",
              (Q(f"histogram_quantile(0.5, sum by (le) (rate("
                 f"parley_gateway_connection_seconds_bucket[{R}])))", "p50"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_gateway_connection_seconds_bucket[{R}])))", "p99")), "s"),
        ]),
        ("Frames", [
            P("Frames in", "Client frames per second, by op.",
              (Q(f"sum by (op) (rate(parley_gateway_frames_in_total[{R}]))", "{{op}}"),), "ops",
              width=8),
            P("Frames out", "Server frames per second, by op.",
              (Q(f"sum by (op) (rate(parley_gateway_frames_out_total[{R}]))", "{{op}}"),), "ops",
              width=8),
            P("Error frames", "error frames per second by code (rate_limited: a socket "
              "sending too fast).",
              (Q(f"sum by (code) (rate(parley_gateway_errors_total[{R}]))", "{{code}}"),), "ops",
              width=8),
            P("Routed from delivery", "Frames arriving on each pod's Redis channel.",
              (Q(f"sum by (instance) (rate(parley_gateway_routed_total[{R}]))", "{{instance}}"),),
              "ops", width=8),
            P("On its Redis channel", "1 while a pod is subscribed to its Redis channels; "
              "0: nothing routed to it is pushed. Alert: ParleyGatewayChannelLost after a "
              "minute.",
              (Q("min by (gateway) (parley_gateway_channel_subscribed)", "{{gateway}}"),),
              width=8),
            P("Acks by path", "Socket acks per second: written by the gateway into the hot "
              "inbox (direct), or left to delivery (a persisted item in range, a large "
              "range, a counter to seed, a refused number). Mostly delivery: recipients "
              "reading what waited in MongoDB (docs/delivery.md, Acks).",
              (Q(f"sum by (path) (rate(parley_gateway_acks_total[{R}]))", "{{path}}"),),
              "ops", width=8),
        ]),
        process_row("gateway"),
    ]  # fmt: skip
    about = "WebSocket gateway pods: sockets, capacity, frames."
    return build("parley-gateway", "Parley gateway", about, rows)


def delivery() -> dict[str, Any]:
    rows: list[Row] = [
        ("Flow", [
            P("Stored, pushed, delivered", "Inbox items stored (by kind), frames published to "
              "gateways, items acknowledged by their recipients, per second.",
              (Q(f"sum by (kind) (rate(parley_delivery_stored_total[{R}]))", "stored {{kind}}"),
               Q(f"sum(rate(parley_delivery_pushed_total[{R}]))", "pushed"),
               Q(DELIVERED, "delivered")), "ops", width=8),
            P("End-to-end latency", "Accept (the envelope's sent_at) to publish: p50, p90, p99.",
              (Q(f"histogram_quantile(0.5, sum by (le) (rate("
                 f"parley_delivery_e2e_latency_seconds_bucket[{R}])))", "p50"),
               Q(f"histogram_quantile(0.9, sum by (le) (rate("
                 f"parley_delivery_e2e_latency_seconds_bucket[{R}])))", "p90"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_delivery_e2e_latency_seconds_bucket[{R}])))", "p99")), "s", width=8),
            P("Inbox depth", "Items waiting in the inboxes of recent recipients (sampled every "
              "5 s from a batch's recipients): p50 and p99.",
              (Q(f"histogram_quantile(0.5, sum by (le) (rate("
                 f"parley_delivery_inbox_depth_bucket[{R}])))", "p50"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_delivery_inbox_depth_bucket[{R}])))", "p99")), width=8),
        ]),
        ("Kafka", [
            P("Consumer lag per partition", "Records each group has still to read, per "
              "partition. Alert: ParleyConsumerLagGrowing.",
              (Q("max by (group, topic, partition) (parley_kafka_consumer_lag)",
                 "{{group}} {{topic}}/{{partition}}"),), width=8),
            P("Records consumed", "Committed-offset progress per group, per second. Alert: "
              "ParleyNoDeliveryProgress when it stops while lag remains.",
              (Q("sum by (group) (max by (group, topic, partition) ("
                 f"rate(parley_kafka_consumer_committed_offset[{R}])))",
                 "{{group}}"),), "ops", width=8),
            P("Records produced", "Topic write rate (end-offset progress), per topic.",
              (Q("sum by (topic) (max by (topic, partition) ("
                 f"rate(parley_kafka_partition_end_offset[{R}])))", "{{topic}}"),),
              "ops", width=8),
            P("Batches", "Records per batch (p50, p99) and the time to store, route and commit "
              "one (p99).",
              (Q(f"histogram_quantile(0.5, sum by (le) (rate("
                 f"parley_delivery_batch_size_bucket[{R}])))", "size p50"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_delivery_batch_size_bucket[{R}])))", "size p99"),
               Q(f"histogram_quantile(0.99, sum by (le) (rate("
                 f"parley_delivery_batch_seconds_bucket[{R}])))", "seconds p99"))),
            P("Trouble", "Duplicates recognised, malformed records, retried batches and "
              "dead letters (alert: ParleyDeadLetters), per second; 1 while a worker waits for "
              "MongoDB or Redis (alert: ParleyDeliveryWaitingForStore).",
              (Q(f"sum(rate(parley_delivery_duplicates_total[{R}]))", "duplicates"),
               Q(f"sum(rate(parley_delivery_rejected_total[{R}]))", "malformed"),
               Q(f"sum(rate(parley_delivery_retries_total[{R}]))", "retries"),
               Q(f"sum by (reason) (rate(parley_delivery_dead_letters_total[{R}]))",
                 "dead letters {{reason}}"),
               Q("max(parley_delivery_waiting_for_store)", "waiting for store"))),
        ]),
        process_row("delivery"),
    ]  # fmt: skip
    about = "Delivery workers: inbox writes, pushes, acks, latency and Kafka lag."
    return build("parley-delivery", "Parley delivery", about, rows)


def rooms() -> dict[str, Any]:
    rows: list[Row] = [
        http_row("rooms"),
        ("Rooms", [
            P("Membership changes", "Room events published per second, by type (joins, "
              "invitations, leaves, removals, roles, state).",
              (Q(f"sum by (change) (rate(parley_rooms_membership_changes_total[{R}]))",
                 "{{change}}"),), "ops", width=8),
            P("Public messages and mentions", "Messages posted to public rooms (stored, or a "
              "resend answered with the original) and mention notifications, per second.",
              (Q(f"sum by (result) (rate(parley_rooms_messages_total[{R}]))", "{{result}}"),
               Q(f"sum(rate(parley_rooms_notifications_total[{R}]))", "notifications")),
              "ops", width=8),
            P("Event outbox", "Room events confirmed by Kafka at once, on a retry from the "
              "outbox, or dropped (their change never committed), per second.",
              (Q(f"sum by (path) (rate(parley_rooms_outbox_sent_total[{R}]))", "{{path}}"),),
              "ops", width=8),
            limits_panel("rooms"),
            P("Live frames", "room_post and notification frames published to gateway pods "
              "(frame x pod) or failed (Redis unreachable: best effort), per second.",
              (Q(f"sum by (kind, result) (rate(parley_rooms_pushed_total[{R}]))",
                 "{{kind}} {{result}}"),), "ops"),
            P("Private rooms' mentions", "Private rooms' message records consumed for their "
              "mentions: a notification made, nothing to do, or malformed, per second.",
              (Q(f"sum by (result) (rate(parley_rooms_room_messages_total[{R}]))",
                 "{{result}}"),), "ops"),
        ]),
        process_row("rooms"),
    ]  # fmt: skip
    about = "Rooms: membership changes, public messages, mentions, the event outbox."
    return build("parley-rooms", "Parley rooms", about, rows)


def notifier() -> dict[str, Any]:
    rows: list[Row] = [
        ("Mention e-mails", [
            P("Notices", "Mention notices consumed per second: kept for a digest (no "
              "connected device), skipped (a device was connected), redelivered, malformed.",
              (Q(f"sum by (result) (rate(parley_notifier_notices_total[{R}]))", "{{result}}"),),
              "ops", width=8),
            P("Digests", "Digest e-mails sent, dropped (unsubscribed, user gone) or failed "
              "(SMTP; tried again), and the mentions they listed, per second.",
              (Q(f"sum by (result) (rate(parley_notifier_digests_total[{R}]))", "{{result}}"),
               Q(f"sum(rate(parley_notifier_mentions_emailed_total[{R}]))", "mentions")),
              "ops", width=8),
            P("Consumer lag", "Notices the notifier has still to read.",
              (Q('sum(max by (topic, partition) '
                 '(parley_kafka_consumer_lag{group=~".*notifier"}))', "lag"),), width=8),
        ]),
        process_row("notifier"),
    ]  # fmt: skip
    about = "The notifier: mention notices consumed and e-mail digests sent."
    return build("parley-notifier", "Parley notifier", about, rows)


def web_apps() -> dict[str, Any]:
    rows: list[Row] = [http_row("web"), process_row("web")]
    about = "The browser apps' static files (the admin console at /admin/)."
    return build("parley-web", "Parley web", about, rows)


def infrastructure() -> dict[str, Any]:
    rows: list[Row] = [
        ("Load balancer (HAProxy)", [
            P("Servers in service", "Servers passing HAProxy's health checks, per backend.",
              (Q("sum by (proxy) (haproxy_backend_active_servers)", "{{proxy}}"),), width=8),
            P("Responses by class", "Responses per second through each backend, by status class.",
              (Q(f"sum by (proxy, code) (rate(haproxy_backend_http_responses_total[{R}]))",
                 "{{proxy}} {{code}}"),), "reqps", width=8),
            P("Current sessions", "Open client sessions per frontend (WebSockets included).",
              (Q("sum by (proxy) (haproxy_frontend_current_sessions)", "{{proxy}}"),), width=8),
        ]),
        ("Kafka (kafka-exporter)", [
            P("Brokers", "Brokers in the cluster.", (Q("max(kafka_brokers)", "brokers"),),
              kind="stat", width=8),
            P("Consumer group lag (broker view)", "Lag per group and topic, as the broker "
              "reports it.",
              (Q("sum by (consumergroup, topic) (kafka_consumergroup_lag)",
                 "{{consumergroup}} {{topic}}"),), width=8),
            P("Records produced", "Messages written per second, per topic.",
              (Q(f"sum by (topic) (rate(kafka_topic_partition_current_offset[{R}]))",
                 "{{topic}}"),), "ops", width=8),
        ]),
        ("MongoDB (mongodb_exporter)", [
            P("MongoDB up", "1 when the exporter reaches MongoDB.",
              (Q("max(mongodb_up)", "up"),), kind="stat", width=8),
            P("Connections", "Current client connections.",
              (Q('sum(mongodb_ss_connections{conn_type="current"})', "current"),), width=8),
            P("Operations", "Operations per second, by type.",
              (Q(f"sum by (legacy_op_type) (rate(mongodb_ss_opcounters[{R}]))",
                 "{{legacy_op_type}}"),), "ops", width=8),
        ]),
        ("Redis (redis_exporter)", [
            P("Redis up", "1 when the exporter reaches Redis.", (Q("max(redis_up)", "up"),),
              kind="stat", width=6),
            P("Clients", "Connected clients and pub/sub channels (one per gateway pod).",
              (Q("sum(redis_connected_clients)", "clients"),
               Q("sum(redis_pubsub_channels)", "channels")), width=6),
            P("Memory", "Memory used by Redis.", (Q("sum(redis_memory_used_bytes)", "used"),),
              "bytes", width=6),
            P("Commands", "Commands processed per second.",
              (Q(f"sum(rate(redis_commands_processed_total[{R}]))", "commands"),), "ops", width=6),
        ]),
        ("Prometheus", [
            P("Scrape targets", "Targets that answer (1) or not (0), per job and instance.",
              (Q("up", "{{job}} {{instance}}"),), width=8),
            P("Scrape duration", "How long each target's scrape took.",
              (Q("scrape_duration_seconds", "{{job}} {{instance}}"),), "s", width=8),
            P("Head series", "Series in Prometheus's head block.",
              (Q("prometheus_tsdb_head_series", "series"),), width=8),
        ]),
    ]  # fmt: skip
    about = "The load balancer, Kafka, MongoDB, Redis and Prometheus itself."
    return build("parley-infrastructure", "Parley infrastructure", about, rows)


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "overview.json": overview,
    "auth.json": auth,
    "keys.json": keys,
    "gateway.json": gateway,
    "delivery.json": delivery,
    "web.json": web_apps,
    "rooms.json": rooms,
    "notifier.json": notifier,
    "infrastructure.json": infrastructure,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python -m deploy.grafana.dashboards [--check]", file=sys.stderr)
        return 2
    stale = []
    for name in DASHBOARDS:
        path = HERE / name
        text = render(name)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale dashboards (run python -m deploy.grafana.dashboards):", *stale)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
