"""Consuming lcm queues: what every role that runs a Celery worker on them shares.

The render worker (``lcm-worker``) and the webhook deliverer (``lcm-webhooks``) both take
items off Redis lists with kombu and Celery; a malformed item must stop neither. This
sub-package holds the screen of queue items (``screen.py``), kombu's Redis transport and
Celery's consumer guarded with it (``broker_guard.py``), the consumption order of
interactive and bulk queues (``order.py``), the settings of the guard (``settings.py``) and
the Celery configuration that installs it (``config.py``).

It is a role of its own in the import rule (README, Architecture;
tests/unit/test_import_rule.py): unlike the rest of the kernel it may load Celery and kombu,
and like it, nothing of ``producer``, ``worker``, ``model_build`` or ``bench``; nothing else of
the kernel imports it. It also uses prometheus_client, which the worker and api extras
install (the roles that import it).
"""
