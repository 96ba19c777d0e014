from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.bundle import (
    BUNDLE_DOMAIN,
    MANIFEST,
    SIGNATURE,
    WEIGHTS,
    BundleFiles,
    bundle_tar,
    make_bundle,
    open_bundle,
    read_bundle_files,
    verify_bundle_files,
    write_bundle_dir,
)
from shared.errors import BundleError
from shared.schemas import BundleManifest, TensorSpec, canonical_json
from shared.tensors import to_safetensors
from tests.unit.helpers import tiny_tensors

CREATED = datetime(2025, 1, 1, tzinfo=UTC)
FIELD = {MANIFEST: "manifest", WEIGHTS: "weights", SIGNATURE: "signature"}


def build(key: Ed25519PrivateKey, tensors: dict[str, torch.Tensor] | None = None):
    return make_bundle(
        run_id="run-1",
        version=3,
        model="segresnet-small",
        model_params={"init_filters": 8},
        weights=to_safetensors(tensors if tensors is not None else tiny_tensors()),
        signing_key=key,
        created_at=CREATED,
    )


def trusted(key: Ed25519PrivateKey) -> dict[str, object]:
    return {crypto.key_id(key.public_key()): key.public_key()}


def resign(manifest: BundleManifest, key: Ed25519PrivateKey, weights: bytes) -> BundleFiles:
    """A bundle whose manifest says what we like, signed properly by ``key``."""
    data = canonical_json(manifest)
    signature = crypto.sign(key, crypto.domain_digest(BUNDLE_DOMAIN, data))
    line = b"ed25519 %s %s\n" % (manifest.key_id.encode(), base64.b64encode(signature))
    return BundleFiles(manifest=data, weights=weights, signature=line)


def replace(files: BundleFiles, name: str, data: bytes) -> BundleFiles:
    parts = {"manifest": files.manifest, "weights": files.weights, "signature": files.signature}
    parts[FIELD[name]] = data
    return BundleFiles(**parts)


def refused(source: Path | bytes, keys, code: str = "bundle_invalid") -> BundleError:
    with pytest.raises(BundleError) as info:
        open_bundle(source, keys)
    assert info.value.code == code
    return info.value


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


# --- round trips -------------------------------------------------------------------------


def test_round_trip_as_directory(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    manifest, files = build(signing_key)
    write_bundle_dir(files, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(FIELD)
    opened = open_bundle(tmp_path / "b", trusted(signing_key))
    assert opened.manifest == manifest
    assert opened.manifest.version == 3 and opened.manifest.model_params == {"init_filters": 8}
    assert opened.manifest.weights_sha256 == hashlib.sha256(files.weights).hexdigest()
    assert opened.manifest.key_id == crypto.key_id(signing_key.public_key())
    assert_same_tensors(opened.tensors, tiny_tensors())


def test_round_trip_as_tar_bytes_and_tar_file(tmp_path: Path, signing_key: Ed25519PrivateKey):
    manifest, files = build(signing_key)
    data = bundle_tar(files)
    assert data == bundle_tar(files)  # deterministic: one bundle, one sha256
    assert open_bundle(data, trusted(signing_key)).manifest == manifest
    (tmp_path / "b.tar").write_bytes(data)
    opened = open_bundle(tmp_path / "b.tar", trusted(signing_key))
    assert_same_tensors(opened.tensors, tiny_tensors())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [MANIFEST, WEIGHTS, SIGNATURE]


@pytest.mark.parametrize("weights_size", [0, 1, 511, 512, 513, 10240, 10241, 100_000])
def test_tar_bytes_are_what_tarfile_writes(weights_size: int) -> None:
    weights = (bytes(range(256)) * 400)[:weights_size]
    files = BundleFiles(manifest=b'{"m":1}', weights=weights, signature=b"ed25519 k s\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (MANIFEST, files.manifest),
            (WEIGHTS, files.weights),
            (SIGNATURE, files.signature),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    assert bundle_tar(files) == buffer.getvalue()


def test_one_of_several_trusted_keys(signing_key, other_signing_key) -> None:
    _, files = build(signing_key)
    keys = {**trusted(other_signing_key), **trusted(signing_key)}
    open_bundle(bundle_tar(files), keys)


def test_a_tar_made_by_another_tar_writer_opens(signing_key: Ed25519PrivateKey) -> None:
    _, files = build(signing_key)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in (SIGNATURE, WEIGHTS, MANIFEST):
            data = getattr(files, FIELD[name])
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1_700_000_000, "root"
            tar.addfile(info, io.BytesIO(data))
    open_bundle(buffer.getvalue(), trusted(signing_key))


# --- tampering ---------------------------------------------------------------------------


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("name", sorted(FIELD))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("form", ["dir", "tar"])
def test_a_flipped_byte_in_any_file_is_refused(
    tmp_path: Path, signing_key: Ed25519PrivateKey, name: str, where: str, form: str
) -> None:
    _, files = build(signing_key)
    original = getattr(files, FIELD[name])
    index = {"first": 0, "middle": len(original) // 2, "last": len(original) - 1}[where]
    if name == SIGNATURE and where == "first":
        index = 1  # "ed25519" -> "ee25519"
    tampered = replace(files, name, flip(original, index))
    if form == "dir":
        write_bundle_dir(tampered, tmp_path / "b")
        refused(tmp_path / "b", trusted(signing_key))
    else:
        refused(bundle_tar(tampered), trusted(signing_key))


def test_every_other_spelling_of_the_signature_is_refused(signing_key) -> None:
    _, files = build(signing_key)
    line = files.signature
    last = line.index(b"==") - 1  # the character that carries 4 unused bits
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for char in alphabet:
        if char == line[last]:
            continue
        tampered = replace(files, SIGNATURE, line[:last] + bytes([char]) + line[last + 1 :])
        refused(bundle_tar(tampered), trusted(signing_key))


@pytest.mark.parametrize("missing", sorted(FIELD))
def test_a_missing_file_is_refused(tmp_path: Path, signing_key, missing: str) -> None:
    _, files = build(signing_key)
    write_bundle_dir(files, tmp_path / "b")
    (tmp_path / "b" / missing).unlink()
    assert "missing" in refused(tmp_path / "b", trusted(signing_key)).message
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(set(FIELD) - {missing}):
            data = getattr(files, FIELD[name])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert "missing" in refused(buffer.getvalue(), trusted(signing_key)).message


def tar_with(files: BundleFiles, extra: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(bundle_tar(files))) as source,
        tarfile.open(fileobj=buffer, mode="w") as tar,
    ):
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member))
        tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return buffer.getvalue()


def test_an_extra_file_is_refused(tmp_path: Path, signing_key) -> None:
    _, files = build(signing_key)
    write_bundle_dir(files, tmp_path / "b")
    (tmp_path / "b" / "model.pt").write_bytes(b"pickle")
    assert "model.pt" in refused(tmp_path / "b", trusted(signing_key)).message
    info = tarfile.TarInfo("model.pt")
    info.size = 6
    assert "model.pt" in refused(tar_with(files, info, b"pickle"), trusted(signing_key)).message


def test_a_duplicate_tar_entry_is_refused(signing_key) -> None:
    _, files = build(signing_key)
    info = tarfile.TarInfo(WEIGHTS)
    info.size = 3
    assert "twice" in refused(tar_with(files, info, b"abc"), trusted(signing_key)).message


def test_links_and_directories_are_refused(tmp_path: Path, signing_key) -> None:
    _, files = build(signing_key)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in (MANIFEST, SIGNATURE):
            data = getattr(files, FIELD[name])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(WEIGHTS)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    refused(buffer.getvalue(), trusted(signing_key))
    write_bundle_dir(files, tmp_path / "b")
    (tmp_path / "w").write_bytes(files.weights)
    (tmp_path / "b" / WEIGHTS).unlink()
    (tmp_path / "b" / WEIGHTS).symlink_to(tmp_path / "w")
    assert "regular file" in refused(tmp_path / "b", trusted(signing_key)).message
    (tmp_path / "b" / WEIGHTS).unlink()
    (tmp_path / "b" / WEIGHTS).mkdir()
    refused(tmp_path / "b", trusted(signing_key))


def test_extended_tar_headers_are_refused(signing_key) -> None:
    _, files = build(signing_key)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in (MANIFEST, WEIGHTS, SIGNATURE):
            data = getattr(files, FIELD[name])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "smuggled"}
            tar.addfile(info, io.BytesIO(data))
    refused(buffer.getvalue(), trusted(signing_key))


@pytest.mark.parametrize("data", [b"", b"not a tar", b"\x00" * 1024, b"\xff" * 2048])
def test_bytes_that_are_no_tar_are_refused(signing_key, data: bytes) -> None:
    refused(data, trusted(signing_key))


def test_an_unknown_key_is_refused(signing_key, other_signing_key) -> None:
    _, files = build(other_signing_key)
    refused(bundle_tar(files), trusted(signing_key), code="unknown_key")
    refused(bundle_tar(files), {}, code="unknown_key")


def test_a_trusted_key_id_over_another_keys_signature_is_refused(
    signing_key, other_signing_key
) -> None:
    _, files = build(other_signing_key)
    trusted_id = crypto.key_id(signing_key.public_key()).encode()
    other_id = crypto.key_id(other_signing_key.public_key()).encode()
    forged = replace(files, SIGNATURE, files.signature.replace(other_id, trusted_id))
    refused(bundle_tar(forged), trusted(signing_key))


def test_the_key_is_checked_before_the_manifest_is_parsed(signing_key, other_signing_key):
    _, files = build(other_signing_key)
    junk = replace(files, MANIFEST, b"{not json")
    refused(bundle_tar(junk), trusted(signing_key), code="unknown_key")
    refused(bundle_tar(junk), trusted(other_signing_key))


def test_a_manifest_naming_another_key_is_refused(signing_key, other_signing_key) -> None:
    manifest, files = build(signing_key)
    lying = manifest.model_copy(update={"key_id": crypto.key_id(other_signing_key.public_key())})
    resigned = resign(lying, signing_key, files.weights)
    keys = {**trusted(signing_key), **trusted(other_signing_key)}
    # the signature line names the key in the manifest: signed by the wrong key
    refused(bundle_tar(resigned), keys)


def test_resigning_an_unchanged_manifest_works(signing_key) -> None:
    """The helper below makes bundles the checks accept, so the refusals are real."""
    manifest, files = build(signing_key)
    open_bundle(bundle_tar(resign(manifest, signing_key, files.weights)), trusted(signing_key))


SPEC_CHANGES = {
    "shape": lambda spec: [
        TensorSpec(name=s.name, shape=[*s.shape, 1], dtype=s.dtype) if s.name == "conv.bias" else s
        for s in spec
    ],
    "dtype": lambda spec: [
        TensorSpec(name=s.name, shape=s.shape, dtype="float64") if s.name == "conv.bias" else s
        for s in spec
    ],
    "missing tensor": lambda spec: [s for s in spec if s.name != "conv.bias"],
    "extra tensor": lambda spec: [*spec, TensorSpec(name="conv.bias2", shape=[4], dtype="float32")],
    "renamed": lambda spec: [
        TensorSpec(name="conv.bias_", shape=s.shape, dtype=s.dtype) if s.name == "conv.bias" else s
        for s in spec
    ],
}


@pytest.mark.parametrize("change", SPEC_CHANGES)
def test_a_manifest_spec_that_disagrees_with_the_weights_is_refused(signing_key, change: str):
    manifest, files = build(signing_key)
    lying = manifest.model_copy(update={"tensors": SPEC_CHANGES[change](manifest.tensors)})
    error = refused(bundle_tar(resign(lying, signing_key, files.weights)), trusted(signing_key))
    assert "conv.bias" in error.message


def test_non_finite_weights_under_a_valid_signature_are_refused(signing_key) -> None:
    tensors = tiny_tensors()
    tensors["conv.bias"][1] = float("nan")
    _, files = build(signing_key, tensors)
    assert "conv.bias" in refused(bundle_tar(files), trusted(signing_key)).message


def test_weights_that_are_no_safetensors_are_refused(signing_key) -> None:
    manifest, _ = build(signing_key)
    junk = b"\x80\x04pickle"
    lying = manifest.model_copy(update={"weights_sha256": hashlib.sha256(junk).hexdigest()})
    refused(bundle_tar(resign(lying, signing_key, junk)), trusted(signing_key))


def test_weights_swapped_for_another_model_are_refused(signing_key) -> None:
    _, files = build(signing_key)
    other = replace(files, WEIGHTS, to_safetensors(tiny_tensors(seed=9)))
    assert "sha256" in refused(bundle_tar(other), trusted(signing_key)).message


def test_verify_and_read_files_are_usable_alone(tmp_path: Path, signing_key) -> None:
    manifest, files = build(signing_key)
    assert read_bundle_files(bundle_tar(files)) == files
    write_bundle_dir(files, tmp_path / "b")
    assert read_bundle_files(tmp_path / "b") == files
    assert verify_bundle_files(files, trusted(signing_key)) == manifest


# --- random mutations --------------------------------------------------------------------

_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_MANIFEST, _FILES = build(_KEY)
_TAR = bundle_tar(_FILES)
_TRUSTED = trusted(_KEY)


def test_the_mutation_target_opens() -> None:
    assert open_bundle(_TAR, _TRUSTED).manifest == _MANIFEST


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(_TAR) - 1), mask=st.integers(1, 255))
def test_random_single_byte_mutations_of_a_bundle_tar_never_verify(position: int, mask: int):
    mutated = bytearray(_TAR)
    mutated[position] ^= mask
    with pytest.raises(BundleError):
        open_bundle(bytes(mutated), _TRUSTED)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(sorted(FIELD)),
    fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_random_single_byte_mutations_of_a_bundle_file_never_verify(name, fraction, mask):
    original = getattr(_FILES, FIELD[name])
    mutated = bytearray(original)
    mutated[int(fraction * len(original))] ^= mask
    with pytest.raises(BundleError):
        open_bundle(bundle_tar(replace(_FILES, name, bytes(mutated))), _TRUSTED)


def test_every_header_and_padding_byte_of_the_tar_is_covered() -> None:
    """Sweep the bytes no signature covers: tar headers, padding and the archive end."""
    covered = []
    with tarfile.open(fileobj=io.BytesIO(_TAR)) as tar:
        for member in tar.getmembers():
            covered.append(range(member.offset_data, member.offset_data + member.size))
    for position in range(len(_TAR)):
        if any(position in span for span in covered) and position % 7:
            continue  # file contents: signed or hashed; sample a seventh of them
        mutated = bytearray(_TAR)
        mutated[position] ^= 0x20
        with pytest.raises(BundleError):
            open_bundle(bytes(mutated), _TRUSTED)
