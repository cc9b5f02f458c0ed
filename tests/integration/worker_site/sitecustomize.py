"""Put on PYTHONPATH of the test worker: importing a build-only package fails there.

This proves the worker serves without torch, diffusers, transformers, optimum or NNCF,
even though the test environment has them installed, and without model_build, which the
worker image does not copy (deploy/docker/Dockerfile).
"""

import importlib.abc
import sys

BLOCKED = {"torch", "diffusers", "transformers", "optimum", "nncf", "torchvision", "model_build"}


class _BuildOnlyBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is a build-only package; a worker must not import it")
        return None


sys.meta_path.insert(0, _BuildOnlyBlocker())
