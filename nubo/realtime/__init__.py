"""Realtime delivery: per-user event streams fanned out across server instances through Redis.

Why not Litestar channels (docs/architecture.md §11): its Redis pub/sub backend keeps no history (no recovery) and its
streams backend has subscribe/unsubscribe races that lose events. The layer here is small and its guarantees
are tested end to end against two real `nubo serve` processes.

How an event travels (see :mod:`nubo.stores.events`):

1. The domain registers the event inside its transaction (``tx.emit(recipients, frame)``): it is written to
   the event outbox in that transaction and published after the commit by
   :meth:`nubo.stores.events.EventBus.publish` (by the relay of any instance if its writer could not, see
   :mod:`nubo.stores.event_outbox`); each event has an identity and is published once.
2. One Lua script, atomically for all recipients: ``INCR {p}rt:user:{id}:seq`` gives the event its id for that
   user (with the Redis epoch ``{p}rt:epoch`` in its high bits), ``XADD {p}rt:user:{id}:events MAXLEN ~ N``
   keeps it in a bounded per-user history, and one
   ``PUBLISH`` on the shared channel ``{p}rt:events`` carries the recipients with their ids and the body.
   Because it is one script, each user's events are published in id order and every id has a history entry.
3. Every instance holds one pub/sub connection (:class:`nubo.realtime.hub.Hub`) and routes the message to its
   local sockets of the listed users only: private data is never broadcast.
4. Each socket has a bounded queue and a writer task that delivers durable events strictly in id order,
   exactly once: ids at or below the last one delivered are dropped (duplicates), and a jump (a pub/sub
   message lost while the instance was reconnecting to Redis) is filled from the history before going on. A
   reconnecting client passes ``last_event_id`` and gets the missed events from the history, or a ``resync``
   event when the history no longer reaches back that far (then it refetches over REST — PostgreSQL has
   everything).

Durable events (``message.new|edited|deleted``, ``read``, ``notification``, ``post.new``) carry ``event_id``.
Ephemeral ones (``typing``, ``presence``) and replies (``hello``, ``ack``, ``pong``, ``error``) carry none:
they are live-only, never replayed (replaying a typing indicator after a reconnect would be wrong) and are not
positions a client can resume from. ``resync`` carries the ``event_id`` to resume from afterwards.

Every frame the server sends is a Struct of :mod:`nubo.realtime.frames`, whose docstring lists them all.

The lobby (the seed's plain-text broadcast) is public by design: any plain-text frame goes to every connected
client on every instance, on its own channel, with no history (:mod:`nubo.realtime.lobby` says what it may
carry).
"""
