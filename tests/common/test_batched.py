"""services/common/batched.py: keys asked together go in one request; keys asked while
requests are on their way go in the next ones; at most ``most`` keys a request and
``parallel`` requests at a time; an error is every caller's; a caller that gives up
cancels nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.batched import Batched
from services.common.errors import ApiError, ErrorCode


class Service:
    """A bulk route whose requests the test answers: it keeps each request's keys."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.tokens: list[str] = []
        self.gates: list[asyncio.Event] = []
        self.fail: Exception | None = None
        self.hold = False

    async def fetch(self, keys: Sequence[str], token: str) -> dict[str, str]:
        self.requests.append(list(keys))
        self.tokens.append(token)
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.hold:
            await gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: k.upper() for k in keys}


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_keys_asked_in_one_turn_are_one_request() -> None:
    svc = Service()
    batched = Batched[str](svc.fetch, most=100)
    answers = await asyncio.gather(*(batched.ask(f"k{i}", "t") for i in range(50)))
    assert answers == [f"K{i}" for i in range(50)]
    assert svc.requests == [[f"k{i}" for i in range(50)]]


async def test_at_most_most_keys_a_request_and_parallel_requests_at_a_time() -> None:
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=10, parallel=2)
    asks = [asyncio.create_task(batched.ask(f"k{i}", "t")) for i in range(45)]
    await turns()
    assert [len(r) for r in svc.requests] == [10, 10]  # two on their way, 25 keys waiting
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    assert await asyncio.gather(*asks) == [f"K{i}" for i in range(45)]
    assert sorted(k for r in svc.requests for k in r) == sorted(f"k{i}" for i in range(45))
    assert max(len(r) for r in svc.requests) == 10


async def test_a_key_waiting_or_on_its_way_is_not_asked_again() -> None:
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=100)
    first = [asyncio.create_task(batched.ask("a", "t")) for _ in range(3)]
    await turns()
    again = [asyncio.create_task(batched.ask(k, "t")) for k in ("a", "b")]
    await turns()
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    assert await asyncio.gather(*first, *again) == ["A", "A", "A", "A", "B"]
    assert svc.requests == [["a"], ["b"]]


async def test_an_error_is_every_callers_and_a_caller_giving_up_cancels_nothing() -> None:
    svc = Service()
    svc.hold = True
    svc.fail = ApiError(ErrorCode.UNAVAILABLE, "down")
    batched = Batched[str](svc.fetch, most=100)
    gone = asyncio.create_task(batched.ask("a", "t"))
    waiting = asyncio.create_task(batched.ask("b", "t"))
    await turns()
    gone.cancel()  # its socket closed
    await turns()
    svc.gates[0].set()
    with pytest.raises(ApiError) as raised:
        await waiting
    assert raised.value is svc.fail
    assert gone.cancelled()
    # The next ask is a new request.
    svc.fail, svc.hold = None, False
    assert await batched.ask("a", "t2") == "A"
    assert svc.requests == [["a", "b"], ["a"]] and svc.tokens[-1] == "t2"


async def test_a_forgotten_key_on_its_way_is_asked_again() -> None:
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=100)
    before = asyncio.create_task(batched.ask("a", "t"))
    await turns()
    batched.forget("a")  # e.g. the user's devices changed
    after = asyncio.create_task(batched.ask("a", "t"))
    await turns()
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    assert (await before, await after) == ("A", "A")
    assert svc.requests == [["a"], ["a"]]


async def test_forget_all_asks_every_key_on_its_way_again() -> None:
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=100)
    before = [asyncio.create_task(batched.ask(k, "t")) for k in ("a", "b")]
    await turns()
    batched.forget_all()  # e.g. the pod lost the channel that tells of changes
    after = [asyncio.create_task(batched.ask(k, "t")) for k in ("a", "b")]
    await turns()
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    assert await asyncio.gather(*before, *after) == ["A", "B", "A", "B"]
    assert svc.requests == [["a", "b"], ["a", "b"]]


async def test_a_fresh_ask_waits_for_a_request_sent_after_it() -> None:
    """A fresh read (the caller knows something changed) does not take the answer of a
    request already on its way; it joins one not yet sent, as the asks after it do."""
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=100)
    old = asyncio.create_task(batched.ask("a", "t"))
    await turns()
    fresh = asyncio.create_task(batched.ask("a", "t", fresh=True))
    later = asyncio.create_task(batched.ask("a", "t"))  # joins the fresh one
    await turns()
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    assert await asyncio.gather(old, fresh, later) == ["A", "A", "A"]
    assert svc.requests == [["a"], ["a"]]


async def test_while_a_request_is_on_its_way_only_full_ones_go_beside_it() -> None:
    """Keys asked while a request is on its way wait for it and go together in the next
    one, unless a full request's worth waits."""
    svc = Service()
    svc.hold = True
    batched = Batched[str](svc.fetch, most=10, parallel=4)
    asks = [asyncio.create_task(batched.ask(f"a{i}", "t")) for i in range(5)]
    await turns()
    asks += [asyncio.create_task(batched.ask(f"b{i}", "t")) for i in range(5)]
    await turns()
    assert [len(r) for r in svc.requests] == [5]  # the b's wait for the a's request
    asks += [asyncio.create_task(batched.ask(f"c{i}", "t")) for i in range(10)]
    await turns()
    assert [len(r) for r in svc.requests] == [5, 10]  # a full one goes beside it
    svc.hold = False
    for gate in svc.gates:
        gate.set()
    await asyncio.gather(*asks)
    assert [len(r) for r in svc.requests] == [5, 10, 5]


async def test_one_callers_refused_token_does_not_fail_the_others() -> None:
    """Audit finding: a request went with the latest caller's token only; a user who
    logged out (or was blocked) while a send was on its way made the whole request,
    every other user's look-ups in it, fail (and the service look down for 10 s)."""
    from services.common.batched import TokenRefused
    from services.common.stale import StaleWhileDown

    svc = Service()
    real = svc.fetch

    async def refusing(keys: Sequence[str], token: str) -> dict[str, str]:
        if token == "revoked":
            svc.tokens.append(token)
            raise TokenRefused("refused")
        return await real(keys, token)

    batched = Batched[str](refusing, most=100)
    answers = await asyncio.gather(batched.ask("a", "good"), batched.ask("b", "revoked"))
    assert answers == ["A", "B"]
    assert svc.tokens == ["revoked", "good"]  # the latest caller's first, then another's
    # Every caller's token refused: every caller's error, and the service is not "down".
    only = Batched[str](refusing, most=100)
    with pytest.raises(TokenRefused) as refused:
        await only.ask("c", "revoked")
    assert refused.value.code is ErrorCode.UNAVAILABLE  # kept by the client, sent again
    cache = StaleWhileDown[str](ttl_s=1, retry_s=10)
    cache.put("c", 0.0, "C")
    assert cache.stale("c", 5.0, refused.value) is None
    assert not cache.is_down(5.0)
