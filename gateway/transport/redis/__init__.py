"""The ``redis://`` and ``rediss://`` transport: Redis Streams with signed envelopes."""
