"""Fuzzing what users and CI feed the CLI: mutated workspace files through ``validate`` and
``plan --refresh=false``, mutated and garbage plan files through ``show`` and ``apply
PLANFILE``. Every run must exit 0 or 1 (never 2, which ``--detailed-exitcode`` means "changes
present", nor anything else), print no traceback, and every error about a workspace file
must name that file.

The corpus is generated from a fixed seed (``FUZZ_SEED`` picks another one), so a failure
is reproducible; ``FUZZ_CASES`` runs more of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reconciler.cli.common import ReconcileGroup, handle_errors
from tests.conftest import RECONCILE_YAML, SANDBOX_YAML, SEGMENTS, WS, Result, cli, profile

SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
CASES = int(os.environ.get("FUZZ_CASES", "36"))

ACTIVATION = """\
segments: [seg-a]
destination: sandbox
name: "{{ date_created }} A"
action: maintain
split: none
attributes: [FIRST_NAME]
"""
FILES = {
    "reconcile.yaml": RECONCILE_YAML,
    "activations/act.yaml": ACTIVATION,
    "segments/seg-a.yaml": "sql: |\n  SELECT customer_id\n  FROM profiles WHERE seg_a\n",
    "integrations/sandbox.yaml": SANDBOX_YAML,
}
ROWS = [profile(i, a=i < 5, b=i % 2 == 0) for i in range(10)]

CONTROL = [chr(c) for c in (*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFFFE)]
ODD = [
    "&a",
    "*a",
    "!!python/object:os.system",
    "<<: *a",
    "? ",
    "|",
    ">",
    "%YAML 1.1",
    "@",
    "`",
    "{",
    "]",
    "\t",
    "'",
    '"',
    "---\n",
    "...\n",
    "#",
    "{{",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x'.ljust(10**9) }}",
    "\u202e",
    "\ufeff",
    "é",
    "null",
    "~",
    "1e999",
    "-0",
    "0x" + "f" * 400,
    "9" * 5000,
]
WRONG = ["[]", "{}", "null", "true", "-1", "3.5", "[[1]]", "{a: {b: c}}", "''", "'x' * 3"]


# ---------------------------------------------------------------------- mutations
def _random_bytes(rng: random.Random, text: str) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))


def _control(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(CONTROL) + text[i:]


def _deep(rng: random.Random, text: str) -> str:
    depth = rng.choice([60, 1_000, 20_000])
    style = rng.randrange(3)
    if style == 0:
        value = "[" * depth + "]" * depth
    elif style == 1:
        value = "{a: " * depth + "1" + "}" * depth
    else:
        return text + "".join("  " * i + f"k{i}:\n" for i in range(min(depth, 400)))
    return text + f"deep: {value}\n"


def _wrong_type(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    key, sep, _ = lines[i].partition(":")
    if sep:
        lines[i] = f"{key}: {rng.choice(WRONG)}"
    return "\n".join(lines) + "\n"


def _huge(rng: random.Random, text: str) -> str:
    size = rng.choice([50_000, 200_000, 300_000])
    key = rng.choice(["name", "sql", "description", "timezone", "x"])
    return text + f"{key}: {'x' * size}\n"


def _truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


def _odd_token(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(ODD) + text[i:]


def _line_shuffle(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    op = rng.randrange(3)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[i])
    else:
        lines[i] = " " * rng.randrange(1, 4) + lines[i]
    return "\n".join(lines) + "\n"


def _bad_utf8(rng: random.Random, text: str) -> bytes:
    raw = text.encode()
    i = rng.randrange(len(raw) + 1)
    return raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + raw[i:]


MUTATIONS: list[Callable[[random.Random, str], str | bytes]] = [
    _random_bytes,
    _control,
    _deep,
    _wrong_type,
    _huge,
    _truncate,
    _odd_token,
    _line_shuffle,
    _bad_utf8,
]


def workspace_corpus(n: int) -> list[tuple[str, str, str | bytes]]:
    rng = random.Random(SEED)
    corpus = []
    for k in range(n):
        rel = rng.choice(sorted(FILES))
        mutate = MUTATIONS[k % len(MUTATIONS)]
        content = FILES[rel]
        for _ in range(rng.choice([1, 1, 2])):
            content = mutate(rng, content) if isinstance(content, str) else content
        corpus.append((f"{k}-{mutate.__name__.strip('_')}", rel, content))
    return corpus


# ---------------------------------------------------------------------- checks
PROBLEM_LINE = re.compile(
    r"^  (reconcile\.yaml|(activations|segments|integrations)/[^/:]+\.ya?ml)(:\d+)?: "
)


def check_run(res: Result, what: str, names: str) -> None:
    """Exit 0 or 1, no traceback, and an ``Error:`` that names the file ``names``. (An apply
    that ran reports per activation instead, e.g. a stale plan: no ``Error:`` line.)"""
    out = res.output + res.stderr
    assert res.exit_code in (0, 1), f"{what}: exit {res.exit_code}\n{out[-2000:]}"
    assert "Traceback" not in out, f"{what}: traceback\n{out[-3000:]}"
    assert "internal error" not in out, f"{what}: {out[-2000:]}"
    if res.exit_code == 1 and res.stderr.startswith("Error: "):
        assert names in res.stderr, f"{what}: the error does not name {names}:\n{res.stderr}"
        head, *problems = res.stderr.rstrip("\n").split("\n")
        if head.startswith("Error: the workspace has"):  # one problem a line, each names its file
            for line in problems:
                assert PROBLEM_LINE.match(line), f"{what}: names no file: {line!r}"
    elif res.exit_code == 1:
        assert "Apply finished" in res.output, f"{what}: {out[-2000:]}"


def _write(ws: WS, rel: str, content: str | bytes) -> None:
    path = ws.root / rel
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")


@pytest.fixture
def fuzz_ws(workspace) -> WS:
    return workspace(
        {"act": ACTIVATION},
        profiles=ROWS,
        segments={"seg-a": FILES["segments/seg-a.yaml"], "seg-b": SEGMENTS["seg-b"]},
    )


def test_mutated_workspace_files(fuzz_ws):
    ws = fuzz_ws
    assert cli(ws, "validate").exit_code == 0
    for name, rel, content in workspace_corpus(CASES):
        _write(ws, rel, content)
        try:
            for args in (("validate",), ("plan", "--refresh=false")):
                check_run(cli(ws, *args), f"{name} {rel} {' '.join(args)}", rel)
        finally:
            _write(ws, rel, FILES[rel])


# ---------------------------------------------------------------------- plan files
def _reseal(parts: dict[str, bytes]) -> dict[str, bytes]:
    manifest = json.loads(parts["manifest.json"])
    manifest["plan_sha256"] = hashlib.sha256(parts["plan.json"]).hexdigest()
    manifest["changes_sha256"] = hashlib.sha256(parts["changes.parquet"]).hexdigest()
    return {**parts, "manifest.json": json.dumps(manifest).encode()}


def _mutate_json(rng: random.Random, data: bytes) -> bytes:
    doc = json.loads(data)

    def walk(node, depth=0):
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            if depth < 3 and rng.random() < 0.6:
                walk(node[key], depth + 1)
            else:
                node[key] = rng.choice(
                    [None, -1, "x" * rng.choice([1, 5000]), [], {}, True, 1e308, "../../etc"]
                )
        elif isinstance(node, list) and node:
            walk(node[rng.randrange(len(node))], depth + 1)

    walk(doc)
    return json.dumps(doc).encode()


def plan_corpus(good: Path, n: int) -> list[tuple[str, bytes | dict[str, bytes]]]:
    rng = random.Random(SEED + 1)
    raw = good.read_bytes()
    with zipfile.ZipFile(good) as zf:
        parts = {name: zf.read(name) for name in zf.namelist()}
    corpus: list[tuple[str, bytes | dict[str, bytes]]] = []
    for k in range(n):
        kind = k % 6
        if kind == 0:  # flip bytes anywhere
            b = bytearray(raw)
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            corpus.append((f"{k}-flip", bytes(b)))
        elif kind == 1:
            corpus.append((f"{k}-truncate", raw[: rng.randrange(len(raw))]))
        elif kind == 2:
            corpus.append((f"{k}-garbage", bytes(rng.randrange(256) for _ in range(500))))
        elif kind == 3:  # edited plan.json, checksums recomputed
            edited = {**parts, "plan.json": _mutate_json(rng, parts["plan.json"])}
            corpus.append((f"{k}-plan-json", _reseal(edited)))
        elif kind == 4:  # edited manifest
            corpus.append(
                (
                    f"{k}-manifest",
                    {**parts, "manifest.json": _mutate_json(rng, parts["manifest.json"])},
                )
            )
        else:  # damaged parquet, checksums recomputed
            pq = bytearray(parts["changes.parquet"])
            for _ in range(rng.randrange(1, 6)):
                pq[rng.randrange(len(pq))] = rng.randrange(256)
            corpus.append((f"{k}-parquet", _reseal({**parts, "changes.parquet": bytes(pq)})))
    return corpus


def _write_plan(path: Path, content: bytes | dict[str, bytes]) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
        return
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in content.items():
            kind = zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED
            zf.writestr(name, data, compress_type=kind)


def test_mutated_plan_files(fuzz_ws, tmp_path):
    ws = fuzz_ws
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    path = tmp_path / "fuzzed.plan"
    for name, content in plan_corpus(good, CASES):
        _write_plan(path, content)
        for args in (("show", str(path)), ("apply", str(path), "--auto-approve")):
            res = cli(ws, *args)
            check_run(res, f"{name} {args[0]}", str(path))


# ---------------------------------------------------------------------- the CLI itself
USAGE_ERRORS = [
    ("plan", "--bogus"),
    ("plan", "--format", "xml"),
    ("plan", "--refresh", "maybe"),
    ("show",),
    ("log",),
    ("run",),
    ("status", "--format"),
    ("no-such-command",),
    ("apply", "--lock-timeout", "soon"),
    ("apply", "--lock-timeout", "-1"),
    ("schema", "nope"),
    ("state", "bogus"),
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a))
def test_usage_errors_exit_1_not_2(fuzz_ws, args):
    res = cli(fuzz_ws, *args)
    assert res.exit_code == 1, res.stderr
    assert "Error:" in res.stderr and "Traceback" not in res.stderr


def test_help_and_version_exit_0(fuzz_ws):
    assert cli(fuzz_ws, "--help").exit_code == 0
    assert cli(fuzz_ws, "plan", "-h").exit_code == 0
    assert cli(fuzz_ws, "--version").exit_code == 0


def _group(exc: BaseException) -> click.Group:
    @click.group(cls=ReconcileGroup)
    def group() -> None:
        pass

    @group.command()
    def boom() -> None:
        raise exc

    @group.command()
    @handle_errors
    def handled() -> None:
        raise exc

    return group


@pytest.mark.parametrize("command", ["boom", "handled"])
def test_ctrl_c_before_the_apply_guard_is_one_line(command):
    res = CliRunner().invoke(_group(KeyboardInterrupt()), [command], catch_exceptions=False)
    assert res.exit_code == 1
    assert res.stderr.strip() == "Error: interrupted"


@pytest.mark.parametrize("command", ["boom", "handled"])
def test_an_unexpected_exception_is_named_not_hidden(command, monkeypatch):
    monkeypatch.delenv("RECONCILE_DEBUG", raising=False)
    group = _group(AttributeError("'NoneType' object has no attribute 'x'\nsecond line"))
    res = CliRunner().invoke(group, [command], catch_exceptions=False)
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        "Error: internal error: AttributeError: 'NoneType' object has no attribute 'x' second "
        "line; please report it (RECONCILE_DEBUG=1 shows the traceback)"
    )
    monkeypatch.setenv("RECONCILE_DEBUG", "1")
    res = CliRunner().invoke(group, [command], catch_exceptions=False)
    assert res.exit_code == 1
    assert "Traceback" in res.stderr and "internal error: AttributeError" in res.stderr


def _reconcile(ws: WS, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "-C", str(ws.root), "--no-color", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECONCILE_DEBUG": "0"},
    )


@pytest.mark.slow
def test_a_few_through_a_real_process(fuzz_ws, tmp_path):
    ws = fuzz_ws
    garbage = tmp_path / "garbage.plan"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    runs = [
        (("show", str(garbage)), str(garbage)),
        (("apply", str(garbage), "--auto-approve"), str(garbage)),
        (("plan", "--bogus"), "No such option"),
        (("show",), "Missing argument"),
    ]
    for args, expected in runs:
        proc = _reconcile(ws, *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and expected in proc.stderr, (args, proc.stderr)
    ws.write("activations/ctl.yaml", "segments: [seg-a]\ndestination: sandbox\nname: a\x07b\n")
    ws.write("activations/deep.yaml", "x: " + "[" * 5000 + "]" * 5000 + "\n")
    runs = [(("validate",), "activations/ctl.yaml:3"), (("validate",), "activations/deep.yaml:1")]
    for args, expected in runs:
        proc = _reconcile(ws, *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and expected in proc.stderr, (args, proc.stderr)
