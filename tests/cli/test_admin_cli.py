"""``fedseg admin …`` against a real server: every command, its --json, and its errors."""

from __future__ import annotations

import json
import tarfile
from io import BytesIO

import pytest
import yaml

from shared import crypto
from shared.bundle import open_bundle
from shared.schemas import AuditEvent, ModelVersion, RoundInfo, RunInfo, SiteCreated, SiteInfo

pytestmark = pytest.mark.integration  # a real server process on loopback


def _json(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _fails(result, code: str) -> str:
    """The command failed with exit 1 and one line naming ``code``, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert "Traceback" not in result.stdout + result.stderr
    assert len(message.splitlines()) == 1, message
    assert f"[{code}]" in message, message
    return message


def _make_sites(admin, *names: str) -> None:
    for name in names:
        _json(admin("sites", "create", name, "--json"))


def test_sites_create_list_revoke(admin, tmp_path):
    result = admin("sites", "create", "charite")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    token = lines[lines.index(next(line for line in lines if "Enrollment token" in line)) + 1]
    assert len(token.strip()) >= 32 and " " not in token.strip()

    created = SiteCreated.model_validate(_json(admin("sites", "create", "uclh", "--json")))
    assert created.site.name == "uclh" and created.site.status == "pending"
    assert created.enrollment_token != token.strip()

    sites = [SiteInfo.model_validate(s) for s in _json(admin("sites", "list", "--json"))]
    assert {"charite", "uclh"} <= {s.name for s in sites}
    table = admin("sites", "list")
    assert table.exit_code == 0 and "charite" in table.stdout and "uclh" in table.stdout

    revoked = SiteInfo.model_validate(_json(admin("sites", "revoke", "uclh", "--json")))
    assert revoked.status == "revoked"
    _fails(admin("sites", "create", "charite"), "site_exists")
    _fails(admin("sites", "revoke", "no-such-site"), "unknown_site")


def test_token_from_file_or_environment(admin, server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(server.token + "\n")
    assert (
        admin("sites", "list", "--json", "--token-file", str(token_file), token=None).exit_code == 0
    )
    init_json = tmp_path / "init.json"  # what `fedseg server init --json` printed
    init_json.write_text(json.dumps({"admin_token": server.token, "data_dir": "x"}))
    assert admin("sites", "list", "--token-file", str(init_json), token=None).exit_code == 0
    # the file wins over the environment
    assert admin("sites", "list", "--token-file", str(token_file), token="wrong").exit_code == 0

    message = _fails(admin("sites", "list", token=None), "invalid_input")
    assert "FEDSEG_ADMIN_TOKEN" in message
    _fails(admin("sites", "list", token="not-a-real-token-" + "x" * 40), "bad_token")


def test_unreachable_server_is_one_line(admin):
    _fails(admin("runs", "list", "--server", "http://127.0.0.1:9"), "unavailable")


def test_runs_create_from_flags_yaml_and_json(admin, tmp_path):
    _make_sites(admin, "flag-a", "flag-b")
    run = RunInfo.model_validate(
        _json(
            admin(
                "runs",
                "create",
                "--name",
                "from-flags",
                "--json",
                "--model",
                "segresnet-small",
                "--rounds",
                "4",
                "--site",
                "flag-a",
                "--site",
                "flag-b",
                "--min-sites",
                "1",
                "--local-steps",
                "7",
                "--crop-size",
                "24",
                "--batch-size",
                "1",
                "--round-timeout",
                "120",
                "--model-param",
                "init_filters=8",
            )
        )
    )
    assert run.status == "created" and run.name == "from-flags"
    config = run.config
    assert (config.rounds, config.sites, config.min_sites) == (4, ["flag-a", "flag-b"], 1)
    assert (config.training.local_steps, config.training.crop_size) == (7, 24)
    assert config.training.batch_size == 1 and config.round_timeout_s == 120
    assert config.model_params == {"init_filters": 8}

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        yaml.safe_dump(
            {
                "model": "segresnet-small",
                "rounds": 2,
                "sites": ["flag-a", "flag-b"],
                "training": {"local_steps": 3},
            }
        )
    )
    from_yaml = RunInfo.model_validate(
        _json(admin("runs", "create", "--config", str(yaml_file), "--rounds", "3", "--json"))
    )
    assert from_yaml.config.rounds == 3  # the flag overrides the file
    assert from_yaml.config.training.local_steps == 3

    json_file = tmp_path / "run.json"
    json_file.write_text(
        json.dumps({"name": "from-json", "config": {"sites": ["flag-a"], "rounds": 1}})
    )
    from_json = RunInfo.model_validate(
        _json(admin("runs", "create", "-c", str(json_file), "--json"))
    )
    assert from_json.name == "from-json" and from_json.config.sites == ["flag-a"]

    listed = [RunInfo.model_validate(r) for r in _json(admin("runs", "list", "--json"))]
    assert {run.id, from_yaml.id, from_json.id} <= {r.id for r in listed}

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sites": ["flag-a"], "rounds": 1, "typo_field": 3}))
    _fails(admin("runs", "create", "-c", str(bad)), "invalid_input")
    # schema-valid, so accepted (issue 10): a quorum above the sites means all of them
    capped = RunInfo.model_validate(
        _json(admin("runs", "create", "--site", "flag-a", "--min-sites", "2", "--json"))
    )
    assert capped.config.min_sites == 1
    _fails(admin("runs", "create", "--rounds", "2"), "invalid_input")  # no sites


def test_run_lifecycle_models_and_audit(admin, server, tmp_path):
    _make_sites(admin, "life-a", "life-b")
    run = RunInfo.model_validate(
        _json(
            admin(
                "runs",
                "create",
                "--name",
                "lifecycle",
                "--site",
                "life-a",
                "--site",
                "life-b",
                "--rounds",
                "2",
                "--local-steps",
                "1",
                "--json",
            )
        )
    )
    started = RunInfo.model_validate(_json(admin("runs", "start", run.id, "--json")))
    assert started.status == "running"
    _fails(admin("runs", "start", run.id), "run_state")

    status = _json(admin("runs", "status", "lifecycle", "--json"))  # by name
    assert RunInfo.model_validate(status["run"]).id == run.id
    rounds = [RoundInfo.model_validate(r) for r in status["rounds"]]
    assert [r.round for r in rounds] == [1] and rounds[0].status == "open"
    text = admin("runs", "status", run.id)
    assert text.exit_code == 0 and "life-a" in text.stdout and "open" in text.stdout

    versions = [
        ModelVersion.model_validate(m) for m in _json(admin("models", "list", run.id, "--json"))
    ]
    assert [v.version for v in versions] == [0]

    key = crypto.load_signing_key(server.key_file).public_key()
    public_pem = tmp_path / "server-key.pem"
    public_pem.write_bytes(crypto.public_key_pem(key))
    out = tmp_path / "v0.tar"
    result = _json(
        admin(
            "models",
            "download",
            run.id,
            "--out",
            str(out),
            "--server-key",
            str(public_pem),
            "--json",
        )
    )
    assert result["verified"] is True and result["version"] == 0
    bundle = open_bundle(out.read_bytes(), {crypto.key_id(key): key})
    assert bundle.manifest.run_id == run.id and bundle.manifest.version == 0
    assert tarfile.is_tarfile(BytesIO(out.read_bytes()))

    # the raw base64 public key, as enrollment hands it to sites, works as well
    import base64

    raw = base64.b64encode(crypto.public_bytes(key)).decode()
    text = admin(
        "models",
        "download",
        run.id,
        "--version",
        "0",
        "-o",
        str(tmp_path / "b.tar"),
        "--server-key",
        raw,
    )
    assert text.exit_code == 0 and "Signature verified" in text.stdout

    other = tmp_path / "other.pem"
    other.write_bytes(crypto.public_key_pem(crypto.generate_signing_key().public_key()))
    _fails(
        admin(
            "models",
            "download",
            run.id,
            "--out",
            str(tmp_path / "x.tar"),
            "--server-key",
            str(other),
        ),
        "unknown_key",
    )
    assert not (tmp_path / "x.tar").exists(), "an unverified bundle was written"
    _fails(
        admin("models", "download", run.id, "--version", "7", "--out", str(tmp_path / "y.tar")),
        "invalid_input",
    )

    stopped = RunInfo.model_validate(_json(admin("runs", "stop", run.id, "--json")))
    assert stopped.status == "cancelled"
    watch = admin("runs", "watch", run.id, "--json", "--interval", "0.2")
    assert watch.exit_code == 1  # the run ended, but not completed
    last = json.loads(watch.stdout.strip().splitlines()[-1])
    assert last["run"]["status"] == "cancelled"

    events = [
        AuditEvent.model_validate(e) for e in _json(admin("audit", "--json", "--limit", "500"))
    ]
    targets = " ".join(f"{e.action} {e.target}" for e in events)
    assert run.id in targets and "life-a" in targets
    assert events == sorted(events, key=lambda e: e.id)
    newest = [AuditEvent.model_validate(e) for e in _json(admin("audit", "--json", "--limit", "2"))]
    assert [e.id for e in newest] == [e.id for e in events[-2:]]
    assert admin("audit").exit_code == 0


def test_unknown_run_is_one_line(admin):
    _fails(admin("runs", "status", "no-such-run"), "unknown_run")


def test_server_key_prints_the_public_key_and_create_prints_the_enroll_command(
    admin, server, tmp_path
):
    key = crypto.load_signing_key(server.key_file).public_key()
    out = tmp_path / "server.pem"
    shown = _json(admin("server-key", "--json", "--out", str(out), token=None))
    assert shown["fingerprint"] == crypto.fingerprint(key)
    assert out.read_bytes() == crypto.public_key_pem(key)
    text = admin("server-key", token=None)
    assert text.exit_code == 0 and "BEGIN PUBLIC KEY" in text.stdout
    assert "PRIVATE" not in text.stdout

    created = admin("sites", "create", "printed-site")
    assert created.exit_code == 0, created.stderr
    assert crypto.fingerprint(key) in created.stdout
    command = next(x for x in created.stdout.splitlines() if "fedseg client enroll" in x)
    assert f"--server {server.url}" in command
    assert f"--server-fingerprint '{crypto.fingerprint(key)}'" in command


def test_server_key_options_take_a_fingerprint_and_refuse_a_private_key(admin, server, tmp_path):
    _make_sites(admin, "key-a")
    run = RunInfo.model_validate(
        _json(admin("runs", "create", "--site", "key-a", "--start", "--json"))
    )
    key = crypto.load_signing_key(server.key_file).public_key()
    by_fingerprint = _json(
        admin(
            "models",
            "download",
            run.id,
            "-o",
            str(tmp_path / "f.tar"),
            "--server-key",
            crypto.fingerprint(key).lower(),
            "--json",
        )
    )
    assert by_fingerprint["verified"] is True

    wrong = crypto.fingerprint(crypto.generate_signing_key().public_key())
    _fails(
        admin("models", "download", run.id, "-o", str(tmp_path / "w.tar"), "--server-key", wrong),
        "unknown_key",
    )
    message = _fails(
        admin(
            "models",
            "download",
            run.id,
            "-o",
            str(tmp_path / "p.tar"),
            "--server-key",
            str(server.key_file),
        ),
        "invalid_input",
    )
    assert "PRIVATE key" in message and "fedseg admin server-key" in message
    assert not (tmp_path / "p.tar").exists() and not (tmp_path / "w.tar").exists()


def test_runs_create_warns_about_sites_that_have_not_enrolled(admin):
    _make_sites(admin, "never-enrolled")
    result = admin("runs", "create", "--site", "never-enrolled")
    assert result.exit_code == 0, result.stderr
    assert "never-enrolled has not enrolled yet" in result.stderr


def test_models_export_from_a_run_records_its_provenance(admin, server, tmp_path):
    _make_sites(admin, "export-a", "export-b")
    run = RunInfo.model_validate(
        _json(
            admin(
                "runs",
                "create",
                "--site",
                "export-a",
                "--site",
                "export-b",
                "--rounds",
                "2",
                "--start",
                "--json",
            )
        )
    )
    key = crypto.load_signing_key(server.key_file).public_key()
    out = tmp_path / "bundle"
    result = _json(
        admin(
            "models",
            "export",
            run.id,  # names can repeat within a second; the id cannot
            "--out",
            str(out),
            "--format",
            "monai-bundle",
            "--server-key",
            crypto.fingerprint(key),
            "--json",
        )
    )
    assert result["run_id"] == run.id and result["version"] == 0
    meta = json.loads((out / "configs" / "metadata.json").read_text())["fedseg"]
    assert meta["sites"] == ["export-a", "export-b"] and meta["rounds"] == 2
    assert meta["privacy"]["mechanism"] == "none" and meta["privacy"]["clip_norm"] is None
    assert meta["server_fingerprint"] == crypto.fingerprint(key)
    assert (out / "models" / "model.pt").is_file()
