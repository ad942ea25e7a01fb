"""The caller's preferences: ``mention_emails`` (the notifier's digests, docs/notifier.md)
and ``show_presence`` (docs/rooms.md, "Presence"), stored on the user document that the
notifier and the rooms service read."""

from __future__ import annotations

from tests.auth.helpers import AuthApi


async def test_mention_emails_are_on_until_turned_off_and_back(auth: AuthApi) -> None:
    user = await auth.signup()
    token, uid = user["access_token"], user["user"]["user_id"]
    path = "/auth/v1/me/preferences"
    on = {"mention_emails": True, "show_presence": True}
    assert (await auth.call("GET", path, token=token, status=200))[1] == on
    _, body = await auth.call("PATCH", path, {"mention_emails": False}, token=token, status=200)
    assert body == {"mention_emails": False, "show_presence": True}
    assert (await auth.call("GET", path, token=token, status=200))[1] == body
    doc = await auth.db["users"].find_one({"_id": uid})
    # What the notifier reads (the embedded server stores a $set boolean as 0/1).
    assert doc is not None and not doc["mention_emails"]
    # An empty patch changes nothing; true turns them on again.
    assert (await auth.call("PATCH", path, {}, token=token, status=200))[1] == body
    _, body = await auth.call("PATCH", path, {"mention_emails": True}, token=token, status=200)
    assert body == on


async def test_presence_is_shown_until_hidden_and_each_preference_alone_changes(
    auth: AuthApi,
) -> None:
    user = await auth.signup()
    token, uid = user["access_token"], user["user"]["user_id"]
    path = "/auth/v1/me/preferences"
    _, body = await auth.call("PATCH", path, {"show_presence": False}, token=token, status=200)
    assert body == {"mention_emails": True, "show_presence": False}
    doc = await auth.db["users"].find_one({"_id": uid})
    assert doc is not None and not doc["show_presence"]  # what the rooms service reads
    _, body = await auth.call("PATCH", path, {"show_presence": True}, token=token, status=200)
    assert body == {"mention_emails": True, "show_presence": True}


async def test_bad_preferences_are_refused_and_change_nothing(auth: AuthApi) -> None:
    user = await auth.signup()
    token = user["access_token"]
    path = "/auth/v1/me/preferences"
    for bad in ({"mention_emails": "no"}, {"mention_emails": 0}, {"other": True},
                {"show_presence": "yes"}, {"show_presence": None, "x": 1}):  # fmt: skip
        status, body = await auth.call("PATCH", path, bad, token=token)
        assert status == 422 and body["error"]["code"] == "validation_failed", (bad, body)
    assert (await auth.call("GET", path, token=token, status=200))[1] == {
        "mention_emails": True, "show_presence": True
    }  # fmt: skip
    status, body = await auth.call("GET", path)
    assert status == 401 and body["error"]["code"] == "unauthenticated"
