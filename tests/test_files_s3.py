"""The `files` destination against an S3-compatible server run in the test (moto's server
mode), through s3fs: the files and manifests land under the bucket's prefix, complete, and
the credentials come from the environment and never show."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import cli, profile

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

KEY_ID, SECRET = "AKIAEXPORTTEST000001", "export-test-secret-never-shown"

S3_YAML = """\
type: files
consent: email_consent
attributes:
  FIRST_NAME: first_name
credentials:
  access_key_id: ${{env:EXPORT_KEY_ID}}
  secret_access_key: ${{env:EXPORT_SECRET}}
endpoint: {endpoint}
config:
  location: s3://exports-bucket/reconcile
  format: {format}
  storage_options: {{client_kwargs: {{region_name: us-east-1}}}}
"""

ACT = """\
goal: export_data
segments: [seg-a]
destination: s3
attributes: [FIRST_NAME]
export: {path: crm, full: daily}
"""


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()  # moto's state is per process
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="exports-bucket")
    monkeypatch.setenv("EXPORT_KEY_ID", KEY_ID)
    monkeypatch.setenv("EXPORT_SECRET", SECRET)
    try:
        yield endpoint, client
    finally:
        server.stop()


def objects(client) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket="exports-bucket").get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket="exports-bucket", Key=o["Key"])["Body"].read()
        for o in listed
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_to_s3_compatible_server(workspace, s3, fmt):
    endpoint, client = s3
    ws = workspace({"crm-export": ACT}, profiles=[profile(i, a=i % 2 == 0) for i in range(1, 11)])
    ws.write("integrations/s3.yaml", S3_YAML.format(endpoint=endpoint, format=fmt))
    assert cli(ws, "validate").exit_code == 0
    text = cli(ws, "plan").output
    assert "export to s3://exports-bucket/reconcile/crm/: delta file of 5 rows" in text

    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert SECRET not in res.output + res.stderr
    stored = objects(client)
    data = sorted(k for k in stored if not k.endswith(".manifest.json"))
    assert [k.rsplit("-", 1)[-1] for k in data] == [f"delta.{fmt}", f"full.{fmt}"]
    assert all(k.startswith("reconcile/crm/crm-export-") for k in stored)
    for key in data:
        body = stored[key]
        manifest = json.loads(stored[key + ".manifest.json"])
        assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
        assert manifest["rows"] == 5
    delta = stored[data[0]]
    con = duckdb.connect()
    try:
        if fmt == "csv":
            text_rows = delta.decode().splitlines()
            assert text_rows[0] == "change,customer_id,email_sha256,phone_sha256,FIRST_NAME"
            assert len(text_rows) == 6 and all(r.startswith("entered,") for r in text_rows[1:])
        else:
            path = ws.root / "delta.parquet"
            path.write_bytes(io.BytesIO(delta).getvalue())
            got = con.execute(f"SELECT change, customer_id FROM '{path}'").fetchall()
            assert sorted(k for _, k in got) == [f"c{i:05d}" for i in range(2, 11, 2)]
    finally:
        con.close()
    assert not list((ws.root / ".reconcile" / "tmp").glob("export-*"))  # uploads cleaned up
    assert "No changes" in cli(ws, "plan").output


def test_a_missing_bucket_fails_the_run_and_records_nothing(workspace, s3):
    endpoint, client = s3
    client.delete_bucket(Bucket="exports-bucket")
    ws = workspace({"crm-export": ACT}, profiles=[profile(i, a=True) for i in range(1, 4)])
    ws.write("integrations/s3.yaml", S3_YAML.format(endpoint=endpoint, format="csv"))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "crm-export: Failed" in res.output + res.stderr
    assert "s3://exports-bucket/reconcile/crm/" in res.output + res.stderr
    assert SECRET not in res.output + res.stderr
    assert "delta file of 3 rows" in cli(ws, "plan").output  # nothing recorded

    client.create_bucket(Bucket="exports-bucket")
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    names = sorted(objects(client))
    assert len(names) == 4 and all("-00001-" in n for n in names)  # the same export, once
    assert "No changes" in cli(ws, "plan").output


def test_a_store_that_does_not_answer_fails_only_its_activation(workspace, monkeypatch):
    """botocore's own errors (no endpoint answering) are the activation's failure, reported
    like any destination error; the other activations still run."""
    monkeypatch.setenv("EXPORT_KEY_ID", KEY_ID)
    monkeypatch.setenv("EXPORT_SECRET", SECRET)
    other = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
    ws = workspace(
        {"crm-export": ACT, "zz-other": other}, profiles=[profile(i, a=True) for i in range(1, 4)]
    )
    quick = "{client_kwargs: {region_name: us-east-1}, config_kwargs: {retries: {max_attempts: 1}}}"
    integration = S3_YAML.format(endpoint="http://127.0.0.1:9", format="csv").replace(
        "{client_kwargs: {region_name: us-east-1}}", quick
    )
    ws.write("integrations/s3.yaml", integration)
    res = cli(ws, "apply", "--auto-approve")
    said = res.output + res.stderr
    assert res.exit_code == 1 and "internal error" not in said, said
    assert "crm-export: Failed" in said and "zz-other: Complete" in said, said
    assert SECRET not in said


def test_a_store_that_accepts_and_never_answers_is_given_up_within_the_retry_budget(
    workspace, monkeypatch
):
    """A store that takes connections and never answers (a stuck proxy, a black-holed
    route): each request ends at its deadline (connect + 2 x read timeout; botocore's read
    timeout alone does not cover the wait for `100 Continue`) and is attempted once per retry
    of the destination's own policy. Before, one export waited past 15 minutes, past any
    budget; the connections the store saw tell how many attempts were made."""
    import socket
    import threading

    monkeypatch.setenv("EXPORT_KEY_ID", KEY_ID)
    monkeypatch.setenv("EXPORT_SECRET", SECRET)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def take() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=take, daemon=True).start()
    port = listener.getsockname()[1]
    ws = workspace({"crm-export": ACT}, profiles=[profile(i, a=True) for i in range(1, 4)])
    short = (
        "{client_kwargs: {region_name: us-east-1},"
        " config_kwargs: {connect_timeout: 1, read_timeout: 1}}"
    )
    ws.write(
        "integrations/s3.yaml",
        S3_YAML.format(endpoint=f"http://127.0.0.1:{port}", format="csv").replace(
            "{client_kwargs: {region_name: us-east-1}}", short
        ),
    )
    try:
        res = cli(ws, "apply", "--auto-approve")
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    said = res.output + res.stderr
    assert res.exit_code == 1 and "crm-export: Failed" in said, said
    assert "s3://exports-bucket/reconcile/crm/" in said and SECRET not in said
    # the policy's 4 attempts, one request each (25 per attempt before)
    assert 1 <= len(accepted) <= 8, len(accepted)
    assert "delta file of 3 rows" in cli(ws, "plan").output  # nothing recorded


def test_s3_client_defaults_bound_each_request_and_yield_to_the_users_settings():
    from destinations.base import DestinationContext
    from destinations.files import FilesDestination
    from destinations.files.config import FilesConfig, FilesCredentials

    def options(storage: dict) -> dict:
        config = FilesConfig(location="s3://b/p", storage_options=storage)
        dest = FilesDestination(config, FilesCredentials(), DestinationContext(root=Path(".")))
        return dest._options()

    got = options({})
    assert got["config_kwargs"]["read_timeout"] == 60
    assert got["config_kwargs"]["connect_timeout"] == 10
    assert got["config_kwargs"]["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    mine = options({"config_kwargs": {"read_timeout": 300}})
    assert mine["config_kwargs"]["read_timeout"] == 300
    assert mine["config_kwargs"]["connect_timeout"] == 10
