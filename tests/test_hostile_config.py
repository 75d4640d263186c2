"""Config and input shapes a fuzz found tracebacks for: each exits 2 naming the key, no traceback, no secret.

The real shipper process, `shipper run`, with the shape in SHIPPER_CONFIG.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import make_config


async def run(config: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = config
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)  # a guard: /dev/zero used to hang
    assert proc.returncode is not None
    return proc.returncode, err.decode().splitlines()


def annotations(path: str) -> str:
    return make_config("http://127.0.0.1:9/loki/api/v1/push", [("/nonexistent/src", "stdout")]).replace(
        'annotations_file = "/nonexistent/annotations"', f"annotations_file = {json.dumps(path)}")


@pytest.mark.parametrize("shape", ["directory", "fifo", "/dev/zero", "huge"])
async def test_an_annotations_file_that_is_not_a_small_regular_file_exits_2_naming_the_key(
        tmp_path: Path, shape: str) -> None:
    path = {"directory": str(tmp_path), "fifo": str(tmp_path / "fifo"), "/dev/zero": "/dev/zero",
            "huge": str(tmp_path / "huge")}[shape]
    if shape == "fifo":
        os.mkfifo(path)
    if shape == "huge":
        Path(path).write_bytes(b'dag_id="x"\n' * 3_000_000)  # 33 MB
    code, err = await run(annotations(path))
    (record,) = [json.loads(line) for line in err]
    assert (code, record["event"]) == (2, "refusing_to_start")
    assert record["error"].startswith(f"airflow.annotations_file: {path} ")


@pytest.mark.parametrize(("toml", "message"), [
    ('[[sources]]\npath = "/a\\u0000b"\nstream = "s"\n', "sources[0].path: must not contain a NUL character"),
    ('[airflow]\nannotations_file = "/a\\u0000"\n', "airflow.annotations_file: must not contain a NUL character"),
    ('spool_dir = "/s\\u0000"\n', "spool_dir: must not contain a NUL character"),
    ('[[sources]]\npath = "/tmp/x"\nstream = "s"\nmultiline = true\nmultiline_start = "'
     + "(" * 3000 + "a" + ")" * 3000 + '"\n',
     "sources[0].multiline_start: regular expression too complex to compile (RecursionError)"),
])
async def test_nul_characters_and_deeply_nested_regexes_exit_2_naming_the_key(toml: str, message: str) -> None:
    code, err = await run(toml)
    assert (code, [json.loads(line)["error"] for line in err]) == (2, [message])


@pytest.mark.parametrize("url", ["http://alice:S3cret@loki/loki/api/v1/push",
                                 "http://alice:S3cret@loki/push?x=1", "ftp://alice:S3cret@loki/push"])
async def test_a_url_with_a_password_is_refused_without_printing_it(url: str) -> None:
    code, err = await run(f'[loki]\nurl = "{url}"\n')
    assert code == 2
    assert len(err) == 1 and "loki.url: " in err[0]
    assert "S3cret" not in err[0] and "alice:***@loki" in err[0]
