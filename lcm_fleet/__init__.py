"""lcm-fleet's shared kernel: what every role (producer, worker, model_build) imports.

The job contract, the connection settings base, backoff, the S3 object store, the
artifact manifest and registry reads, and every Redis key. Nothing here imports Celery,
OpenVINO, torch or NNCF at module level (tests/unit/test_import_rule.py checks it), and
nothing here imports ``producer``, ``worker`` or ``model_build``.
"""
