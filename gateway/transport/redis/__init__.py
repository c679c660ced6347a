"""Redis Streams transport (``redis://``, ``rediss://``): sites and relays meet in Redis.

Neither side listens for the other: a site appends signed requests to a stream
(``flgate:req:<job id>``, or ``flgate:req:ctl`` for calls of no job) and reads
its own reply stream; relays read the request streams through one consumer
group, answer, then acknowledge and delete the entry. ``rediss://`` speaks TLS
to Redis, verifies the Redis server against the federation's CA and presents
the participant's certificate; ``redis://`` is plain TCP (loopback, tests).
Either way, identity never comes from the connection: every entry is signed
and checked as :mod:`.protocol` describes, including every layout detail.

- :mod:`.protocol`: entries, their layout, signatures and checks (no I/O);
- :mod:`.connection`: the connection pool, its TLS, redis-py's errors translated;
- :mod:`.client`: a site's (or admin's) side, :class:`~.client.RedisTransportClient`;
- :mod:`.server`: the relays' side and scale-out, :class:`~.server.RedisTransportServer`.

Redis >= 7.0 is required (``SET ... NX GET``, ``XAUTOCLAIM``). Who may write to
Redis may still delete or delay entries: signatures give authenticity, not
availability, so restrict Redis with ACLs and TLS all the same.
"""
