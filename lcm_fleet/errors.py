"""The kernel's exceptions: the contract's rejection, artifact, storage and registry errors.

Each package has its own small tree on top (producer/errors.py, worker/errors.py,
model_build/errors.py); these are the ones that cross between roles.
"""

from __future__ import annotations


class LcmError(Exception):
    """Base of everything the kernel raises."""


class InvalidJob(LcmError, ValueError):
    """A job that can never succeed: rejected at submit, or failed once by a worker.

    The message names the field, the value and what is allowed. Workers never retry it.
    """


class ManifestError(LcmError):
    """An artifact's manifest is missing, malformed, or does not match its files."""


class StorageError(LcmError):
    """Object storage refused or failed a request."""


class TransientStorageError(StorageError):
    """A storage fault worth retrying: connection, timeout, 5xx, throttling, checksum mismatch."""


class RegistryError(LcmError):
    """Base of the model registry's errors (lcm_fleet.artifact.registry)."""


class RegistryInputError(RegistryError, ValueError):
    """A model name, reference or artifact that cannot be used; the message says how to fix it."""


class UnknownModelError(RegistryInputError):
    """No such model name, version or alias in the store."""


class IntegrityError(RegistryError):
    """Published objects do not match their manifest or their version."""
