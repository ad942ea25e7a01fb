"""The stable error codes a client can see, in HTTP bodies and WebSocket `error` frames.

Clients branch on the code; the message next to it is for people. The HTTP
status of each code lives with the services (services/common/errors.py).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Generic request errors.
    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    VALIDATION_FAILED = "validation_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal_error"
    UNAVAILABLE = "service_unavailable"
    # Authentication and authorisation.
    UNAUTHENTICATED = "unauthenticated"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    FORBIDDEN = "forbidden"
    INVALID_CREDENTIALS = "invalid_credentials"
    ACCOUNT_BLOCKED = "account_blocked"
    ACCOUNT_LOCKED = "account_locked"
    USERNAME_TAKEN = "username_taken"
    EMAIL_TAKEN = "email_taken"
    WEAK_PASSWORD = "weak_password"
    INVALID_USERNAME = "invalid_username"
    INVALID_CODE = "invalid_code"
    CHALLENGE_EXPIRED = "challenge_expired"
    SECOND_FACTOR_REQUIRED = "second_factor_required"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    SESSION_NOT_FOUND = "session_not_found"
    DEVICE_REMOVED = "device_removed"
    USER_NOT_FOUND = "user_not_found"
    # Keys.
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_KEY = "invalid_key"
    BATCH_TOO_LARGE = "batch_too_large"
    DUPLICATE_PREKEY = "duplicate_prekey"
    IDENTITY_NOT_FOUND = "identity_not_found"
    DEVICE_NOT_FOUND = "device_not_found"
    PREKEYS_EXHAUSTED = "prekeys_exhausted"
    TOO_MANY_PREKEYS = "too_many_prekeys"
    TOO_MANY_DEVICES = "too_many_devices"
    # Messaging (WebSocket).
    AUTH_REQUIRED = "auth_required"
    AUTH_TIMEOUT = "auth_timeout"
    UNKNOWN_OP = "unknown_op"
    FRAME_TOO_LARGE = "frame_too_large"
    RECIPIENT_NOT_FOUND = "recipient_not_found"
    DEVICES_CHANGED = "devices_changed"
    DEVICE_REQUIRED = "device_required"
    SLOW_CONSUMER = "slow_consumer"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    SEQ_NOT_ISSUED = "seq_not_issued"
    REAUTH_REQUIRED = "reauth_required"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    INBOX_FULL = "inbox_full"
    TOO_MANY_PENDING = "too_many_pending"
    # Rooms (docs/rooms.md).
    ROOM_NOT_FOUND = "room_not_found"
    ROOM_CLOSED = "room_closed"
    ROOM_FULL = "room_full"
    NOT_A_MEMBER = "not_a_member"
    ALREADY_MEMBER = "already_member"
    INVITATION_NOT_FOUND = "invitation_not_found"
    CANNOT_TARGET_SELF = "cannot_target_self"
    CANNOT_REMOVE_OWNER = "cannot_remove_owner"
    OWNER_MUST_TRANSFER = "owner_must_transfer"
    BANNED = "banned"
    INVALID_TEXT = "invalid_text"
    # Moderation of public rooms' messages (docs/moderation.md).
    MESSAGE_NOT_FOUND = "message_not_found"
    MESSAGE_REMOVED = "message_removed"
    # Moderation of end-to-end encrypted messages: reports and tombstones
    # (docs/moderation-messages.md; message_not_found above, too).
    INVALID_FRANKING_TAG = "invalid_franking_tag"
    FRANKING_MISMATCH = "franking_mismatch"
    NOT_RECIPIENT = "not_recipient"
    REPORT_NOT_FOUND = "report_not_found"
    REPORT_RESOLVED = "report_resolved"
    NOT_SENDER = "not_sender"
