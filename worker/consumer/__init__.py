"""Queue plumbing: the Celery app and task, retry policy, deliveries, reclaim, broker guard."""
