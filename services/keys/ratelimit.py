"""The claim rate limit: a token bucket per (claimer, target) pair in Redis.

Each bundle claim for another user costs one token; a pair starts with
``claim_burst`` tokens and gets one back every ``claim_refill_s`` seconds
(defaults: 6, then one per 100 s, i.e. 36 an hour). That is Signal's budget
of 6 claims per 10 minutes per pair without its fixed window, so there is no
double burst at a window's edge. Claims of one's own user (the other devices
of the claimer) are not limited: draining one's own prekeys harms no one else.
The state lives in Redis so every replica shares it; it uses the Redis
server's clock.
"""

from __future__ import annotations

import math

from services.common.errors import ApiError, ErrorCode
from services.keys.policy import KeysPolicy
from services.keys.store import KeyStore


async def check_claim(store: KeyStore, policy: KeysPolicy, claimer: str, target: str) -> None:
    """Spend a token for ``claimer`` claiming ``target``'s bundles or raise RATE_LIMITED."""
    if claimer == target:
        return
    allowed, wait_s = await store.take_token(
        store.claims_key(claimer, target), policy.claim_burst, policy.claim_refill_s
    )
    if not allowed:
        retry_after = max(1, math.ceil(wait_s))
        raise ApiError(
            ErrorCode.RATE_LIMITED,
            "Too many bundle claims for this user; try again later.",
            details={"retry_after_s": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
