"""``flgate bench``: what the gateway costs, measured against a real SuperLink.

Every figure is taken twice in the same run, directly and through the gateway
(a relay and a site gateway, each in its own process, over each transport),
with the two alternating so that drift of the machine hits both alike.
"""
