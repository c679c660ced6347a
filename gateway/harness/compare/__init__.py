"""Prove that a Flower app gives the same results directly and through the gateway.

The same app runs twice at the same time on this machine, with the same seeds,
run-config and node configs: once with its SuperNodes dialing the SuperLink
directly, once through a relay and one site gateway per site
(:func:`gateway.harness.local_run.run_app`). Each run's per-round metrics and final
parameter hash are read by :mod:`gateway.control.jobs.results` (the app's
``FLGATE-RESULT`` line, else Flower's own log).

- :mod:`.model`: the comparison itself, pure: both runs lined up round by round,
  the first value that differs, the verdict.
- :mod:`.runs`: running both modes at once and collecting what they reported.
- :mod:`.report`: ``report.json``, ``report.md``, ``curves.png`` and the table's cells.

Nothing here prints; progress goes to a callback.
"""
