import json
import logging

from services.common.logging import (
    JsonFormatter,
    kafka_headers,
    outgoing_headers,
    request_id_from_kafka,
    request_id_var,
)


def test_json_lines_carry_service_request_id_and_extras() -> None:
    fmt = JsonFormatter("keys")
    record = logging.LogRecord(
        "parley.x", logging.INFO, __file__, 1, "claimed %s", ("bundle",), None
    )
    record.user_id = "u1"
    token = request_id_var.set("rid-42")
    try:
        line = json.loads(fmt.format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "claimed bundle"
    assert line["service"] == "keys"
    assert line["request_id"] == "rid-42"
    assert line["user_id"] == "u1"
    assert line["level"] == "info"


def test_request_id_travels_over_http_and_kafka_headers() -> None:
    token = request_id_var.set("rid-7")
    try:
        assert outgoing_headers() == {"X-Request-ID": "rid-7"}
        headers = kafka_headers([("kind", b"message")])
    finally:
        request_id_var.reset(token)
    assert request_id_from_kafka(headers) == "rid-7"
    assert outgoing_headers() == {}
    assert request_id_from_kafka([("request_id", b"\x00\x01")]) is None


def test_the_user_id_of_the_caller_is_on_every_line() -> None:
    from services.common.logging import user_id_var

    fmt = JsonFormatter("auth")
    record = logging.LogRecord("parley.x", logging.INFO, __file__, 1, "did", (), None)
    token = user_id_var.set("u-9")
    try:
        line = json.loads(fmt.format(record))
    finally:
        user_id_var.reset(token)
    assert line["user_id"] == "u-9"
    assert "user_id" not in json.loads(fmt.format(record))
