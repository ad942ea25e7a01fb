"""The auth service's own metrics (beside the HTTP metrics every service has).

- ``parley_auth_login_failures_total{factor}``: a wrong password (``password``:
  login, and the password asked again before sensitive changes) or a wrong
  second-factor code (``code``);
- ``parley_auth_emails_total{kind,result}``: e-mails handed to the SMTP
  server (``sent``) or not (``failed``), by kind (``login_code``,
  ``setup_code``, ``password_reset``, ``security_notice``);
- the limiter's ``parley_rate_limit_refusals_total{service="auth",rule,code}``
  and ``parley_rate_limit_lockouts_total{service="auth",rule}``
  (services/common/ratelimit.py). A "refusal" of ``security_notices`` is a
  notice past the account's cap (the first is still mailed, saying so; those
  after it until the window ends are not mailed).

Every label value is created at zero, so that a dashboard shows 0, not "no data".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.ratelimit import RateLimitMetrics

FACTORS = ("password", "code")
MAIL_KINDS = ("login_code", "setup_code", "password_reset", "security_notice")
MAIL_RESULTS = ("sent", "failed")


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry, rules: tuple[str, ...] = ()) -> None:
        self.limits = RateLimitMetrics(registry, "auth", rules)
        self.login_failures = Counter(
            "parley_auth_login_failures_total",
            "Failed sign-in checks, by factor (password, code).",
            ["factor"], registry=registry,
        )  # fmt: skip
        self.emails = Counter(
            "parley_auth_emails_total",
            "E-mails handed to the SMTP server (sent) or not (failed), by kind.",
            ["kind", "result"], registry=registry,
        )  # fmt: skip
        for factor in FACTORS:
            self.login_failures.labels(factor)
        for kind in MAIL_KINDS:
            for result in MAIL_RESULTS:
                self.emails.labels(kind, result)
