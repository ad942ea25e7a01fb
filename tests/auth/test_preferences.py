"""The caller's preferences: ``mention_emails`` (the notifier's digests, docs/notifier.md),
stored on the user document that the notifier reads."""

from __future__ import annotations

from tests.auth.helpers import AuthApi


async def test_mention_emails_are_on_until_turned_off_and_back(auth: AuthApi) -> None:
    user = await auth.signup()
    token, uid = user["access_token"], user["user"]["user_id"]
    path = "/auth/v1/me/preferences"
    assert (await auth.call("GET", path, token=token, status=200))[1] == {"mention_emails": True}
    _, body = await auth.call("PATCH", path, {"mention_emails": False}, token=token, status=200)
    assert body == {"mention_emails": False}
    assert (await auth.call("GET", path, token=token, status=200))[1] == {"mention_emails": False}
    doc = await auth.db["users"].find_one({"_id": uid})
    # What the notifier reads (the embedded server stores a $set boolean as 0/1).
    assert doc is not None and not doc["mention_emails"]
    # An empty patch changes nothing; true turns them on again.
    assert (await auth.call("PATCH", path, {}, token=token, status=200))[1] == {
        "mention_emails": False
    }
    _, body = await auth.call("PATCH", path, {"mention_emails": True}, token=token, status=200)
    assert body == {"mention_emails": True}


async def test_bad_preferences_are_refused_and_change_nothing(auth: AuthApi) -> None:
    user = await auth.signup()
    token = user["access_token"]
    path = "/auth/v1/me/preferences"
    for bad in ({"mention_emails": "no"}, {"mention_emails": 0}, {"other": True}):
        status, body = await auth.call("PATCH", path, bad, token=token)
        assert status == 422 and body["error"]["code"] == "validation_failed", (bad, body)
    assert (await auth.call("GET", path, token=token, status=200))[1] == {"mention_emails": True}
    status, body = await auth.call("GET", path)
    assert status == 401 and body["error"]["code"] == "unauthenticated"
