"""``fedseg client run`` fails fast: one line, a documented exit code, nothing written.

Permission cases use real ``chmod`` when the tests run as a normal user; as root
(who may write anywhere) ``os.access`` is made to answer as it would for the
container's non-root user, which is the one fake here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.phantoms import generate
from fedseg import client_cli
from fedseg.cli import app

ROOT = os.getuid() == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fail-fast-data") / "brats"
    generate(root, cases=2, size=16, seed=1)
    return root


def _run(state: Path, data: Path):
    return CliRunner().invoke(
        app,
        ["client", "run", "--state-dir", str(state), "--data", str(data)],
        catch_exceptions=False,
    )


def _one_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in result.stdout + result.stderr
    return message


def _deny(monkeypatch: pytest.MonkeyPatch, denied: Path, mode: int) -> None:
    """Make ``denied`` lack the ``mode`` bits for this process (chmod, or access as root)."""
    if not ROOT:
        denied.chmod(0o555 if mode & os.W_OK else 0o000)
        return
    real = os.access

    def access(path: object, want: int, **kwargs: object) -> bool:
        if Path(str(path)) == denied and want & mode:
            return False
        return real(path, want, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("client.preflight.os.access", access)


def test_a_state_dir_that_is_not_writable(tmp_path, dataset, monkeypatch):
    parent = tmp_path / "mnt"
    parent.mkdir()
    _deny(monkeypatch, parent, os.W_OK)
    try:
        message = _one_line(_run(parent / "state", dataset), client_cli.EXIT_STATE_DIR)
    finally:
        parent.chmod(0o755)
    assert "not writable: permission denied" in message and f"uid {os.getuid()}" in message
    assert not (parent / "state").exists()


def test_a_data_dir_that_is_not_readable(tmp_path, dataset, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    _deny(monkeypatch, data, os.R_OK)
    try:
        message = _one_line(_run(tmp_path / "state", data), client_cli.EXIT_DATA)
    finally:
        data.chmod(0o755)
    assert "permission denied" in message and f"uid {os.getuid()}" in message
    assert not (tmp_path / "state").exists()


def test_a_dicom_folder_says_to_convert_to_nifti(tmp_path):
    series = tmp_path / "export" / "patient1" / "series7"
    series.mkdir(parents=True)
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (series / "IM0002.dcm").write_bytes(b"\0" * 128 + b"DICM")
    message = _one_line(_run(tmp_path / "state", tmp_path / "export"), client_cli.EXIT_DATA)
    assert "DICOM" in message and "NIfTI" in message and "dcm2niix" in message
    assert not (tmp_path / "state").exists()


def test_a_single_case_folder_points_at_its_parent(tmp_path, dataset):
    case = next(p for p in sorted(dataset.iterdir()) if p.is_dir())
    message = _one_line(_run(tmp_path / "state", case), client_cli.EXIT_DATA)
    assert "single case" in message and str(dataset) in message


def test_a_nested_dataset_points_one_level_down(tmp_path, dataset):
    wrapper = dataset.parent
    message = _one_line(_run(tmp_path / "state", wrapper), client_cli.EXIT_DATA)
    assert f"point at {dataset}" in message


def test_ctrl_c_prints_one_line_saying_the_round_resumes(tmp_path, dataset, monkeypatch):
    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(client_cli, "_run_agent", interrupted)
    message = _one_line(_run(tmp_path / "state", dataset), client_cli.EXIT_STOPPED)
    assert "round resumes" in message


def test_check_data_names_the_fix_for_a_dicom_folder(tmp_path):
    series = tmp_path / "export" / "series1"
    series.mkdir(parents=True)
    (series / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    result = CliRunner().invoke(
        app, ["client", "check-data", str(tmp_path / "export")], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "dcm2niix" in result.stderr and "Traceback" not in result.stderr


def test_enroll_refuses_an_unwritable_state_dir_before_any_network_call(tmp_path, monkeypatch):
    parent = tmp_path / "mnt"
    parent.mkdir()
    _deny(monkeypatch, parent, os.W_OK)
    try:
        result = CliRunner().invoke(
            app,
            [
                "client", "enroll", "--server", "http://127.0.0.1:9", "--token",
                "fse_" + "a" * 40, "--state-dir", str(parent / "state"),
            ],
            catch_exceptions=False,
        )  # fmt: skip
    finally:
        parent.chmod(0o755)
    message = _one_line(result, client_cli.EXIT_STATE_DIR)
    assert "not writable: permission denied" in message
    assert not (parent / "state").exists()
