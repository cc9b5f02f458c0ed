"""Model artifacts encrypted at rest: AES-256-GCM per file, decrypted in memory.

``lcm-build encrypt`` (model_build/cli.py) encrypts every OpenVINO IR file of an artifact
(``*.xml``, ``*.bin``) into ``<name>.enc``: an 8-byte magic, a 12-byte random nonce and
the ciphertext with its 16-byte tag, the file's relative path as associated data (a file
moved to another place does not decrypt). The configs (JSON) stay readable. The manifest's
``files`` hash the files as stored (the ciphertext), so the hash check needs no key;
``encryption.plaintext`` holds each decrypted file's sha256, checked after decryption.

A worker (LCM_MODEL_KEY) decrypts into memory and hands OpenVINO the model from a buffer
(worker/render/pipeline.py); no decrypted byte is written to disk. ``cryptography`` is
imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from lcm_fleet.artifact.manifest import Encryption, Manifest
from lcm_fleet.errors import ManifestError
from worker.errors import ModelLoadError

ALGORITHM = "AES-256-GCM"
SUFFIX = ".enc"
MAGIC = b"LCMENC1\0"
_NONCE = 12
_TAG = 16
KEY_SETTING = "LCM_MODEL_KEY"
KEY_FIX = "make one with `openssl rand -base64 32`"


def parse_key(text: str, where: str = KEY_SETTING) -> bytes:
    """The 32-byte key from its base64 text; ModelLoadError naming ``where`` otherwise.

    The message never quotes the value.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ModelLoadError(f"{where} is not valid base64: {KEY_FIX}") from e
    if len(key) != 32:
        raise ModelLoadError(
            f"{where} must be 32 bytes in base64 (AES-256), it decodes to {len(key)}: {KEY_FIX}"
        )
    return key


def read_key_file(path: Path) -> bytes:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ModelLoadError(f"--key-file {path} is unreadable: {e}") from e
    return parse_key(text, f"--key-file {path}")


def key_id(key: bytes) -> str:
    """A public fingerprint of ``key`` (names which key an artifact needs; reveals nothing)."""
    return hashlib.sha256(b"lcm-fleet model key\0" + key).hexdigest()[:16]


def is_encrypted_name(rel: str) -> bool:
    return rel.endswith((".xml", ".bin"))


def encrypt_bytes(key: bytes, data: bytes, rel: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, rel.encode())


def decrypt_bytes(key: bytes, blob: bytes, rel: str, where: object) -> bytes:
    """The plaintext of ``blob`` (the stored ``rel + .enc``); ModelLoadError if it is not
    authentic under ``key`` (wrong key, flipped byte, a file moved or truncated)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _NONCE + _TAG:
        raise ModelLoadError(
            f"refusing to serve {where}: {rel}{SUFFIX} is not an lcm-fleet encrypted file"
        )
    nonce = blob[len(MAGIC) : len(MAGIC) + _NONCE]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + _NONCE :], rel.encode())
    except InvalidTag as e:
        raise ModelLoadError(
            f"refusing to serve {where}: {rel}{SUFFIX} does not decrypt (AES-GCM tag check "
            "failed): the file was changed after encryption or the key is not the one it "
            "was encrypted with"
        ) from e


def check_key(manifest: Manifest, key: bytes | None, where: object) -> None:
    """Refuse an encrypted artifact without its key, or with another key (by fingerprint)."""
    enc = manifest.encryption
    if enc is None:
        return
    if enc.algorithm != ALGORITHM:
        raise ModelLoadError(
            f"refusing to serve {where}: encrypted with {enc.algorithm!r}, this worker "
            f"decrypts {ALGORITHM}; upgrade the worker"
        )
    if key is None:
        raise ModelLoadError(
            f"refusing to serve {where}: its model files are encrypted ({ALGORITHM}, key id "
            f"{enc.key_id}); set {KEY_SETTING} to the base64 key it was encrypted with"
        )
    if key_id(key) != enc.key_id:
        raise ModelLoadError(
            f"refusing to serve {where}: {KEY_SETTING} is not the key it was encrypted with "
            f"(key id {key_id(key)}, the artifact needs {enc.key_id})"
        )


class Decryptor:
    """Reads the plaintext of an artifact's files, decrypting the encrypted ones in memory."""

    def __init__(self, folder: Path, encryption: Encryption | None, key: bytes | None) -> None:
        self.folder, self.encryption, self.key = Path(folder), encryption, key

    def read(self, rel: str) -> bytes:
        enc = self.encryption
        if enc is None or rel not in enc.plaintext:
            return (self.folder / rel).read_bytes()
        if self.key is None:
            raise ModelLoadError(f"{self.folder}: {rel} is encrypted and no key was given")
        blob = (self.folder / (rel + SUFFIX)).read_bytes()
        data = decrypt_bytes(self.key, blob, rel, self.folder)
        actual = hashlib.sha256(data).hexdigest()
        if actual != enc.plaintext[rel]:
            raise ModelLoadError(
                f"refusing to serve {self.folder}: {rel} decrypts to sha256 {actual[:16]}..., "
                f"the manifest says {enc.plaintext[rel][:16]}..."
            )
        return data


def encrypt_artifact(src: Path, out: Path, key: bytes) -> Path:
    """Copy the artifact ``src`` to ``out`` with its IR files encrypted; its manifest path.

    ``src`` is verified first (hashes); ``out`` must not exist. The new manifest keeps every
    section of the old one and adds ``encryption``; a worker needs the key to serve it.
    """
    import shutil

    from lcm_fleet.artifact.manifest import (
        read_manifest,
        sha256_bytes,
        verify_files,
        write_manifest,
    )

    src, out = Path(src), Path(out)
    try:
        manifest = read_manifest(src)
        verify_files(src, manifest)
    except ManifestError as e:
        raise ModelLoadError(f"cannot encrypt {src}: {e}") from e
    if manifest.encryption is not None:
        raise ModelLoadError(f"cannot encrypt {src}: it is encrypted already")
    if out.exists():
        raise ModelLoadError(f"cannot encrypt into {out}: it exists; name a new folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plaintext: dict[str, str] = {}
    for rel in sorted(manifest.files):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not is_encrypted_name(rel):
            shutil.copy2(src / rel, target)
            continue
        data = (src / rel).read_bytes()
        plaintext[rel] = sha256_bytes(data)
        (tmp / (rel + SUFFIX)).write_bytes(encrypt_bytes(key, data, rel))
    info = manifest.info().model_copy(
        update={
            "encryption": Encryption(
                algorithm=ALGORITHM,
                key_id=key_id(key),
                plaintext=plaintext,
                plaintext_manifest_sha256=manifest.sha256,
            )
        }
    )
    write_manifest(tmp, info)
    tmp.rename(out)
    return out / "manifest.json"
