"""The embedded store and feed."""

import asyncio

from agent.events import CallEndedEvent, TransitionEvent
from agent.feed import MemoryFeed
from agent.store import MemoryStore


async def test_store_keeps_state_until_ttl():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    await store.save("CA1", {"state": "menu", "slots": {"a": "1"}}, ttl_s=60)
    loaded = await store.load("CA1")
    assert loaded == {"state": "menu", "slots": {"a": "1"}}
    loaded["state"] = "changed"  # a copy: callers cannot mutate the store
    assert (await store.load("CA1"))["state"] == "menu"
    now[0] += 61
    assert await store.load("CA1") is None


async def test_claim_once_is_idempotent_within_ttl():
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    assert await store.claim_once("status:CA1:completed:3", ttl_s=10)
    assert not await store.claim_once("status:CA1:completed:3", ttl_s=10)
    now[0] += 11
    assert await store.claim_once("status:CA1:completed:3", ttl_s=10)


async def test_feed_broadcasts_and_filters_by_call():
    feed = MemoryFeed()
    everything = feed.subscribe()
    one = feed.subscribe("CA2")
    feed.publish(TransitionEvent(call_sid="CA1", t=1, from_=None, to="menu"))
    feed.publish(TransitionEvent(call_sid="CA2", t=2, from_="menu", to="billing", intent="billing"))
    got_all = [await everything.queue.get(), await everything.queue.get()]
    assert [e.call_sid for e in got_all] == ["CA1", "CA2"]
    only = await asyncio.wait_for(one.queue.get(), 1)
    assert only.call_sid == "CA2" and one.queue.empty()
    await everything.aclose()
    await one.aclose()


async def test_slow_subscriber_drops_instead_of_blocking():
    feed = MemoryFeed(max_queue=3)
    sub = feed.subscribe()
    for i in range(10):
        feed.publish(CallEndedEvent(call_sid="CA1", t=i, reason="stop"))
    assert sub.queue.qsize() == 3
    assert feed.dropped == 7
    await sub.aclose()


def test_event_json_uses_the_contract_names():
    import orjson

    e = TransitionEvent(call_sid="CA1", t=5, from_="menu", to="billing", intent="billing")
    assert orjson.loads(e.to_json()) == {
        "type": "dialog.transition",
        "call_sid": "CA1",
        "t": 5,
        "from": "menu",
        "to": "billing",
        "intent": "billing",
    }
