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
    _fails(admin("runs", "create", "--site", "flag-a", "--min-sites", "2"), "invalid_input")
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

    out = tmp_path / "v0.tar"
    result = _json(
        admin(
            "models",
            "download",
            run.id,
            "--out",
            str(out),
            "--server-key",
            str(server.key_file),
            "--json",
        )
    )
    assert result["verified"] is True and result["version"] == 0
    key = crypto.load_signing_key(server.key_file).public_key()
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
    crypto.save_signing_key(crypto.generate_signing_key(), other)
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
