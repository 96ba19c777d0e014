"""Signed model bundles: what the server publishes each round. Data, never code.

A bundle is three files, as a directory or an uncompressed tar:

- ``manifest.json``: canonical JSON of `BundleManifest` (tensor specs, the sha256
  of the weights, the signing key's id);
- ``weights.safetensors``: the tensors;
- ``signature``: one line ``ed25519 <key id> <base64 signature>``, the signature over
  the domain digest of ``manifest.json``'s exact bytes.

`open_bundle` checks in this order and parses nothing before it has to: the file set,
the key id (must be trusted), the signature, the weights' sha256, the manifest, and
last the tensors against the manifest's spec. No pickle anywhere.

This module needs numpy, not torch: weights go in as safetensors bytes, and an
opened bundle offers numpy arrays; its ``tensors`` (torch) are made on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from shared import crypto
from shared.arrays import Arrays, from_safetensors, spec_of, validate_arrays
from shared.errors import BundleError, FedsegError
from shared.schemas import BundleManifest, canonical_json

if TYPE_CHECKING:
    from shared.tensors import Tensors

MANIFEST: Final = "manifest.json"
WEIGHTS: Final = "weights.safetensors"
SIGNATURE: Final = "signature"
FILE_NAMES: Final = frozenset({MANIFEST, WEIGHTS, SIGNATURE})
BUNDLE_DOMAIN: Final = b"fedseg/bundle/v1"
MAX_MANIFEST_SIZE: Final = 16 * 1024 * 1024
_SIGNATURE_LINE = re.compile(rb"ed25519 ([0-9a-f]{64}) ([A-Za-z0-9+/]{86}==)\n")


@dataclass(frozen=True, slots=True)
class BundleFiles:
    """The raw, unverified bytes of a bundle's three files (what is read, tarred or tampered)."""

    manifest: bytes
    weights: bytes
    signature: bytes


@dataclass(frozen=True, eq=False)
class Bundle:
    """A signed model bundle: its manifest and its deterministic tar bytes, one copy.

    The one bundle type: the server builds it (`make_bundle` then `bundle_tar`) and
    serves ``data``; a site gets it from `open_bundle`, verified. ``sha256`` is the
    tar's hash (the bundle's identity, ETag and blob key); the weights' own hash is
    ``manifest.weights_sha256``.
    """

    manifest: BundleManifest
    data: bytes

    @property
    def run_id(self) -> str:
        """The run this bundle belongs to."""
        return self.manifest.run_id

    @property
    def version(self) -> int:
        """The model version: 0 is the initial model, n closes round n."""
        return self.manifest.version

    @cached_property
    def sha256(self) -> str:
        """The sha256 of the tar bytes (hashed once, on first use)."""
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def weights(self) -> memoryview:
        """The safetensors bytes of the weights: a view into ``data``, no copy."""
        return tar_member(self.data, WEIGHTS)

    @cached_property
    def arrays(self) -> Arrays:
        """Read-only numpy views of the weights."""
        return from_safetensors(self.weights)

    @cached_property
    def tensors(self) -> Tensors:
        """The weights as torch tensors of their own (imports torch on first use)."""
        from shared.tensors import from_arrays

        return from_arrays(self.arrays)


def tar_member(data: bytes, name: str) -> memoryview:
    """A view of one member of a bundle tar, without a copy."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            member = tar.getmember(name)
    except KeyError:
        raise BundleError(f"bundle has no {name}") from None
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle is not a readable tar: {exc}") from None
    return memoryview(data)[member.offset_data : member.offset_data + member.size]


def make_bundle(
    *,
    run_id: str,
    version: int,
    model: str,
    model_params: Mapping[str, Any],
    weights: bytes,
    signing_key: Ed25519PrivateKey,
    created_at: datetime | None = None,
) -> tuple[BundleManifest, BundleFiles]:
    """Sign a manifest describing ``weights`` (safetensors bytes; the digest, once).

    The manifest's tensor spec is read from the weights' own header, so it cannot
    disagree with them. Serialise torch tensors with `shared.tensors.to_safetensors`
    and numpy arrays with `shared.arrays.to_safetensors`.
    """
    try:
        spec = spec_of(from_safetensors(weights))
    except FedsegError as exc:
        raise BundleError(f"bundle weights are not valid: {exc.message}") from None
    public_key = signing_key.public_key()
    manifest = BundleManifest(
        run_id=run_id,
        version=version,
        model=model,
        model_params=dict(model_params),
        tensors=spec,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        created_at=created_at or datetime.now(UTC),
        key_id=crypto.key_id(public_key),
    )
    manifest_bytes = canonical_json(manifest)
    signature = crypto.sign(signing_key, crypto.domain_digest(BUNDLE_DOMAIN, manifest_bytes))
    line = b"ed25519 %s %s\n" % (manifest.key_id.encode(), base64.b64encode(signature))
    return manifest, BundleFiles(manifest=manifest_bytes, weights=weights, signature=line)


def bundle_tar(files: BundleFiles) -> bytes:
    """Pack a bundle as a deterministic, uncompressed tar, in one copy of the weights.

    The bytes are exactly what `tarfile` writes (PAX format, mode 0644, mtime 0):
    the member headers come from `tarfile.TarInfo.tobuf`, and the members, their
    padding, the end-of-archive blocks and the record padding are joined once
    (`tarfile` would copy the weights through a buffer in 16 KiB steps, then again).
    """
    parts: list[bytes | memoryview] = []
    offset = 0
    for name, data in (
        (MANIFEST, files.manifest),
        (WEIGHTS, files.weights),
        (SIGNATURE, files.signature),
    ):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        padding = -len(data) % tarfile.BLOCKSIZE
        parts += [header, memoryview(data), tarfile.NUL * padding]
        offset += len(header) + len(data) + padding
    offset += 2 * tarfile.BLOCKSIZE
    parts.append(tarfile.NUL * (2 * tarfile.BLOCKSIZE + -offset % tarfile.RECORDSIZE))
    return b"".join(parts)


def write_bundle_dir(files: BundleFiles, path: Path) -> None:
    """Write a bundle as a directory (created; must not exist yet)."""
    path.mkdir(parents=True)
    (path / MANIFEST).write_bytes(files.manifest)
    (path / WEIGHTS).write_bytes(files.weights)
    (path / SIGNATURE).write_bytes(files.signature)


def read_bundle_files(source: Path | bytes) -> BundleFiles:
    """Read exactly the three files from a directory, a tar file or tar bytes."""
    if isinstance(source, Path) and source.is_dir():
        names = {entry.name for entry in source.iterdir()}
        _check_names(names)
        for name in names:
            if not (source / name).is_file() or (source / name).is_symlink():
                raise BundleError(f"bundle entry {name!r} is not a regular file")
        return BundleFiles(
            manifest=(source / MANIFEST).read_bytes(),
            weights=(source / WEIGHTS).read_bytes(),
            signature=(source / SIGNATURE).read_bytes(),
        )
    data = source.read_bytes() if isinstance(source, Path) else source
    return _read_tar(data)


def _check_names(names: set[str]) -> None:
    missing = sorted(FILE_NAMES - names)
    extra = sorted(names - FILE_NAMES)
    if missing:
        raise BundleError(f"bundle is missing {', '.join(missing)}")
    if extra:
        raise BundleError(f"bundle has unexpected entries: {', '.join(extra)}")


def _read_tar(data: bytes) -> BundleFiles:
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            names = [member.name for member in members]
            if len(set(names)) != len(names):
                raise BundleError("bundle lists an entry twice")
            _check_names(set(names))
            for member in members:
                if not member.isfile():
                    raise BundleError(f"bundle entry {member.name!r} is not a regular file")
                handle = tar.extractfile(member)
                if handle is None:
                    raise BundleError(f"bundle entry {member.name!r} cannot be read")
                contents[member.name] = handle.read()
                if len(contents[member.name]) != member.size:
                    raise BundleError(f"bundle entry {member.name!r} is truncated")
            _check_tar_layout(data, members)
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle is not a readable tar: {exc}") from None
    return BundleFiles(
        manifest=contents[MANIFEST], weights=contents[WEIGHTS], signature=contents[SIGNATURE]
    )


def _check_tar_layout(data: bytes, members: list[tarfile.TarInfo]) -> None:
    """Refuse bytes a tar reader skips: checksum-field slack, padding, trailing blocks.

    Those bytes are covered by no signature; accepting them would let a changed bundle
    verify. Each entry must be one plain header block (no extended headers) with the
    usual checksum field, its data padded with zeros, and the archive end all zeros.
    """
    position = 0
    for member in members:
        if member.offset != position or member.offset_data != position + tarfile.BLOCKSIZE:
            raise BundleError(f"bundle entry {member.name!r} has an unexpected tar header")
        if data[position + 148 : position + 156] != b"%06o\x00 " % member.chksum:
            raise BundleError(f"bundle entry {member.name!r} has a malformed tar checksum")
        end = member.offset_data + member.size
        position = end + (-end % tarfile.BLOCKSIZE)
        if data[end:position].strip(b"\x00"):
            raise BundleError(f"bundle entry {member.name!r} has non-zero tar padding")
    if data[position:].strip(b"\x00"):
        raise BundleError("bundle tar has data after its entries")


def verify_bundle_files(
    files: BundleFiles, trusted_keys: Mapping[str, Ed25519PublicKey]
) -> BundleManifest:
    """Check key id, signature and weights hash, then parse and return the manifest."""
    match = _SIGNATURE_LINE.fullmatch(files.signature)
    if match is None:
        raise BundleError("bundle signature file is malformed")
    signer_id = match.group(1).decode()
    public_key = trusted_keys.get(signer_id)
    if public_key is None:
        raise BundleError(
            f"bundle is signed by an unknown key {signer_id[:16]}…", code="unknown_key"
        )
    if len(files.manifest) > MAX_MANIFEST_SIZE:
        raise BundleError("bundle manifest is too large")
    try:
        signature = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise BundleError("bundle signature is not base64") from None
    if base64.b64encode(signature) != match.group(2):
        # The last character carries 4 unused bits: refuse the 15 other spellings of a
        # valid signature, so that no changed byte of a bundle ever verifies.
        raise BundleError("bundle signature is not canonical base64")
    try:
        crypto.verify(public_key, signature, crypto.domain_digest(BUNDLE_DOMAIN, files.manifest))
    except FedsegError:
        raise BundleError("bundle signature does not verify", code="bundle_invalid") from None
    try:
        manifest = BundleManifest.model_validate_json(files.manifest)
    except ValidationError as exc:
        raise BundleError(f"bundle manifest is invalid: {exc.errors()[0]['msg']}") from None
    if manifest.key_id != signer_id:
        raise BundleError("bundle manifest names another key than its signature")
    if hashlib.sha256(files.weights).hexdigest() != manifest.weights_sha256:
        raise BundleError("bundle weights do not match the manifest's sha256")
    return manifest


def open_bundle(source: Path | bytes, trusted_keys: Mapping[str, Ed25519PublicKey]) -> Bundle:
    """Verify a bundle completely, then view its weights. Raises `BundleError`.

    ``.arrays`` are numpy views of the weights; ``.tensors`` converts them to torch.
    A directory is re-packed as the same deterministic tar the server serves.
    """
    data = source.read_bytes() if isinstance(source, Path) and not source.is_dir() else source
    files = read_bundle_files(data)
    manifest = verify_bundle_files(files, trusted_keys)
    bundle = Bundle(manifest=manifest, data=data if isinstance(data, bytes) else bundle_tar(files))
    del files
    try:
        validate_arrays(bundle.arrays, manifest.tensors)
    except FedsegError as exc:
        raise BundleError(f"bundle weights disagree with the manifest: {exc.message}") from None
    return bundle
