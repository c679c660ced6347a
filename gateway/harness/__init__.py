"""The local harness: everything on one machine, for newcomers, researchers and tests.

``flgate demo`` and ``flgate compare`` (``demo.py``, ``compare/``), local runs of an app
directly or through a throw-away federation (``local_run.py``), a seeded TCP fault injector
(``faultproxy.py``) and throw-away ``redis-server`` processes (``redis_server.py``). Nothing in
the relay's or a site's production path imports this package (``tests/unit/test_architecture.py``).
"""
