"""Running Flower's own programs (SuperLink, SuperNode, ``flwr run``) as processes.

The gateway never imports flwr; it starts Flower's command-line programs from a
Flower installation (a ``bin`` directory) and learns their version from them.
"""
