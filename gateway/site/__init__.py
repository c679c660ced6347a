"""A site: per-job LGS servers and the forwarder that carries their calls to the relay."""
