"""Flux messages: delivered to subscribers on separate connections within their TTL, gone after it."""

from __future__ import annotations

import asyncio
import uuid

from nubo.stores import Stores
from nubo.stores.redis import Keys, open_redis
from nubo.stores.redis_flux import message_key, publish, subscribe


async def test_two_subscribers_receive_within_ttl_then_body_expires(stores: Stores) -> None:
    keys = Keys(stores.keys.prefix)
    channel = f"typing:{uuid.uuid4()}"
    # Separate clients, hence separate pub/sub connections (as on two server instances).
    first_client, second_client = open_redis(stores.settings.redis_url), open_redis(stores.settings.redis_url)
    first = await subscribe(first_client, keys, channel)
    second = await subscribe(second_client, keys, channel)
    try:
        message_id = await publish(stores.redis, keys, channel, {"user": "ann", "typing": True}, ttl_ms=300)
        received = await asyncio.wait_for(asyncio.gather(anext(first), anext(second)), timeout=0.3)
        assert received == [{"user": "ann", "typing": True}] * 2
        assert 0 < await stores.redis.pttl(message_key(keys, channel, message_id)) <= 300
        await asyncio.sleep(0.35)
        assert await stores.redis.get(message_key(keys, channel, message_id)) is None
    finally:
        await first.aclose()
        await second.aclose()
        await first_client.aclose()
        await second_client.aclose()


async def test_expired_messages_are_skipped(stores: Stores) -> None:
    """A subscriber that reads an announcement after the body's TTL skips it and gets the next live one."""
    keys = Keys(stores.keys.prefix)
    channel = f"typing:{uuid.uuid4()}"
    client = open_redis(stores.settings.redis_url)
    async with await subscribe(client, keys, channel) as sub:
        await publish(stores.redis, keys, channel, {"n": 1}, ttl_ms=1)
        await asyncio.sleep(0.05)  # the first body expires before the subscriber looks at it
        await publish(stores.redis, keys, channel, {"n": 2})
        assert await asyncio.wait_for(anext(sub), timeout=1.0) == {"n": 2}
    await client.aclose()
