"""Settings that only the auth service reads (``PARLEY_*`` like the shared ones).

They live here rather than in ``services/common/config.py`` because no other
service needs them. Defaults are the production values; tests pass a cheap
argon2 profile and small limits (see ``AuthSettings.for_tests``). Every option
is listed in docs/auth.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.config import ConfigError, Settings, read_settings
from services.common.ratelimit import Limit


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_", extra="ignore", frozen=True, validate_default=True,
        allow_inf_nan=False,
    )  # fmt: skip

    # Password hashing: argon2id. Defaults are RFC 9106's second recommended
    # option ("uniformly safe" with 64 MiB): t=3, m=64 MiB, p=4 (docs/auth.md).
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=65536, ge=8, le=4 * 1024 * 1024)
    argon2_parallelism: int = Field(default=4, ge=1, le=16)
    # Hashes computed at once per process (each holds argon2_memory_kib).
    argon2_max_concurrency: int = Field(default=4, ge=1, le=64)

    password_min_length: int = Field(default=10, ge=8, le=64)
    password_max_length: int = Field(default=256, ge=64, le=1024)

    # Signing keys (Ed25519): rotated automatically at this age; every process
    # re-reads the key set from MongoDB this often; a new key is published this
    # long before any process signs with it.
    signing_key_max_age_s: int = Field(default=30 * 86400, ge=3600)
    signing_key_reload_s: float = Field(default=30.0, ge=0)
    signing_key_activation_delay_s: float | None = Field(default=None, ge=0)

    # Two-factor.
    totp_issuer: str = Field(default="Parley", min_length=1, max_length=64)
    challenge_ttl_s: int = Field(default=300, ge=30, le=3600)
    challenge_max_attempts: int = Field(default=5, ge=1, le=50)
    email_code_ttl_s: int = Field(default=600, ge=60, le=3600)
    email_code_sends_per_challenge: int = Field(default=3, ge=1, le=20)
    recovery_code_count: int = Field(default=10, ge=4, le=32)
    password_reset_ttl_s: int = Field(default=1800, ge=300, le=86400)
    # Live sessions an account keeps (each sign-in opens one for 30 days); a sign-in
    # past it ends the least recently used (docs/auth.md, "Sessions").
    max_sessions: int = Field(default=100, ge=1, le=10_000)
    # Refresh tokens issued: derived from a per-session key (one document a session
    # whatever its refreshes), or stored one document each, as versions before
    # 2026-12-07 did and read: set `stored` while such processes still serve (a rolling
    # upgrade), then back (docs/auth.md, "Refresh tokens"). Both kinds are read always.
    refresh_tokens: Literal["derived", "stored"] = "derived"

    # Rate limits, COUNT/SECONDS. Per client IP and per account.
    limit_signup_ip: str = "30/3600"
    limit_login_ip: str = "30/300"
    # Wrong passwords per (account, client address), then that address is
    # locked out of that account; and per account from every address, past
    # which addresses the account has not signed in from are locked out too
    # (docs/auth.md, "Rate limits and lockout").
    limit_login_failures: str = "10/900"
    limit_login_account_failures: str = "50/900"
    limit_code_ip: str = "30/300"
    # Wrong second-factor codes per (account, client address), then that address is
    # locked out of that account's code entry; and per account from every address,
    # past which addresses the account has not fully signed in from are locked out
    # too. The account-wide count keeps the old per-account budget (10): a 6-digit
    # code is a small space, so many addresses together get no more guesses than one
    # did (docs/auth.md, "Rate limits and lockout").
    limit_code_failures: str = "5/900"
    limit_code_account_failures: str = "10/900"
    limit_reset_ip: str = "10/3600"
    limit_reset_account: str = "3/3600"
    limit_refresh_ip: str = "120/60"
    # At the OpenID provider's token endpoint: failed code exchanges and failed client
    # authentications per client address; successes do not count (docs/auth.md,
    # "OpenID Connect provider").
    limit_token_ip: str = "120/60"
    # Authorization requests kept waiting for a sign-in or a consent (each held in Redis
    # for oidc_request_ttl_s), per client address (docs/auth.md, "OpenID Connect
    # provider"): over the request lifetime, at most this many wait at once.
    limit_authorize_ip: str = "300/900"
    # E-mailed second-factor codes (login and enrolment) per (account, client address);
    # and per account from every address the account has not fully signed in from,
    # which the owner's known addresses skip. Per account alone (6/3600), someone with
    # only the password spent the sends in five logins and the owner's login mailed no
    # code for an hour (docs/auth.md, "Rate limits and lockout").
    limit_email_code_sends: str = "6/3600"
    limit_email_code_account_sends: str = "20/3600"
    # The password asked again before a sensitive change (2FA setup and removal, new
    # recovery codes, a password change), per account: every request counts, right
    # password or wrong, before argon2 runs.
    limit_reauth_account: str = "10/900"
    # And per account, all its sessions together (counted after the session's window,
    # so one session spends at most its own 10): per session alone, every login bought
    # 10 more argon2 checks (~1,000 per 15 minutes from one address).
    limit_reauth_user: str = "30/900"
    # Security notices mailed per account; one more past it says that the next ones
    # are held until the window ends (services/auth/notices.py).
    limit_security_notices: str = "5/3600"

    # OpenID Connect provider (docs/auth.md, "OpenID Connect provider").
    # The issuer is PARLEY_PUBLIC_URL unless set; the admin console's address
    # (its built-in client's redirect URIs) is <issuer>/admin/ unless set.
    oidc_issuer: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*[^/?#])?$")
    oidc_code_ttl_s: int = Field(default=60, ge=5, le=600)
    oidc_id_token_ttl_s: int = Field(default=900, ge=60, le=86400)
    # The provider's own sign-in session (cookie): a second authorization within
    # this time needs no password; absolute, not sliding.
    oidc_login_session_ttl_s: int = Field(default=1800, ge=60, le=86400)
    # How long a pending authorization request waits for the user to sign in.
    oidc_request_ttl_s: int = Field(default=900, ge=60, le=3600)
    admin_console_url: str | None = Field(default=None, pattern=r"^https?://[^?#]+/$")

    # An address a user fully signed in from (password and second factor)
    # stays "known" this long: the account-wide lockout does not apply to it.
    known_address_ttl_s: int = Field(default=30 * 86400, ge=3600, le=400 * 86400)

    # How often each process checks that Redis still holds the revocations
    # (a restart empties it): they are restored from MongoDB when it does not.
    revocation_check_s: float = Field(default=5.0, gt=0, le=300)

    # Take the client IP from the last X-Forwarded-For hop (set by HAProxy /
    # the ALB). Turn off only when clients reach the service directly.
    trust_forwarded_for: bool = True

    @field_validator(
        "limit_signup_ip",
        "limit_login_ip",
        "limit_login_failures",
        "limit_login_account_failures",
        "limit_code_ip",
        "limit_code_failures",
        "limit_code_account_failures",
        "limit_reset_ip",
        "limit_reset_account",
        "limit_refresh_ip",
        "limit_token_ip",
        "limit_authorize_ip",
        "limit_email_code_sends",
        "limit_email_code_account_sends",
        "limit_reauth_account",
        "limit_reauth_user",
        "limit_security_notices",
    )
    @classmethod
    def _limit(cls, value: str) -> str:
        Limit.parse(value)
        return value

    @model_validator(mode="after")
    def _argon2_memory(self) -> AuthSettings:
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise ValueError("argon2_memory_kib must be at least 8 x argon2_parallelism")
        return self

    def limit(self, name: str) -> Limit:
        return Limit.parse(str(getattr(self, f"limit_{name}")))

    @property
    def activation_delay_s(self) -> float:
        if self.signing_key_activation_delay_s is not None:
            return self.signing_key_activation_delay_s
        # Every process re-reads the key set at least once before the key signs.
        return 2 * self.signing_key_reload_s + 1

    @classmethod
    def for_tests(cls, **overrides: Any) -> AuthSettings:
        """A cheap argon2 profile (never for production) and no reload delay."""
        base: dict[str, Any] = {
            "argon2_time_cost": 1,
            "argon2_memory_kib": 8,
            "argon2_parallelism": 1,
            "signing_key_reload_s": 0,
            "trust_forwarded_for": True,
        }
        base.update(overrides)
        return cls(**base)


# The names of the rate-limit rules (``limit_<rule>`` above), for the metrics.
LIMIT_RULES = tuple(
    n.removeprefix("limit_") for n in AuthSettings.model_fields if n.startswith("limit_")
)


# The shortest key-encryption secret accepted (an HKDF input, not a password:
# `make run` and Terraform generate 43 and 48 random characters).
MIN_SECRET_CHARS = 32


def check_auth_config(settings: Settings) -> None:
    """The auth service's start-up check (``run_service``): its own settings read as
    the shared ones are (ConfigError: one line naming the variable, no value echoed;
    before 2026-12-08 a bad one was a traceback printing it, exit 1, from inside the
    app's factory), then :func:`require_key_encryption`."""
    read_settings(AuthSettings)
    require_key_encryption(settings)


def require_key_encryption(settings: Settings) -> None:
    """Refuse (ConfigError) to run without a key-encryption secret outside development.

    Signing keys, TOTP seeds and refresh keys are sealed with it (services.auth.secretbox);
    without it they would be stored in plain base64. Only ``PARLEY_ENV=development``
    allows that (the service then logs a warning at start).
    """
    secret = settings.key_encryption_secret
    value = secret.get_secret_value() if secret is not None else ""
    if not value:
        if settings.env == "development":
            return
        raise ConfigError(
            "PARLEY_KEY_ENCRYPTION_SECRET is required: it encrypts the signing keys and "
            "TOTP seeds at rest (set PARLEY_ENV=development to store them unencrypted "
            "on a development machine)"
        )
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"PARLEY_KEY_ENCRYPTION_SECRET must have at least {MIN_SECRET_CHARS} characters"
        )
