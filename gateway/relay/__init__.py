"""The relay: one port for all sites and jobs, a dispatcher, and an LGC per job."""
