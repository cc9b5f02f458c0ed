"""``lcm-fleet``: one pinned worker per socket or GPU on this machine, restarted when it dies."""
