"""The control plane: the job manager and its store, the relay's and the site's long-running
apps, the admin API and its client, the scale-out board.
"""
