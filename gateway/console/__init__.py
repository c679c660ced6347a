"""``flgate console``: a web page for admins, served on their own machine.

``access`` (pure: token, loopback, ``Host`` rules), ``views`` (pure: the relay's answers as
the page's JSON), ``events`` (Server-Sent Events), ``relay_link`` (the one admin
connection and the relay's reach), ``app`` (routes and handlers), ``server`` (bind, run,
stop), ``static/`` (the page; Chart.js vendored with its license).
"""
