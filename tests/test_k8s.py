"""k8s/: schema validation, the pod-template contract, and the capture wrapper run for real.

1. Every manifest validates against the Kubernetes schemas (kubernetes-validate,
   strict, 1.29 = first release with native sidecars on by default, and the
   newest the package knows); the pod template inside each ConfigMap too.
   Custom resources (PodMonitor, HelmRelease) have no schema there: their
   structure is checked by hand below.
2. The contract: base first, the sidecar's placement and restartPolicy,
   requests, security, probes on endpoints the shipper really serves on the
   port its config listens on, a SHIPPER_CONFIG that `shipper check-config`
   (a real subprocess) accepts, and mounts that match the configured paths.
3. The capture wrapper of base, taken from the manifest, runs under bash with
   real commands: passthrough, separate files, exit code, SIGTERM, sentinel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # PyPI kubernetes-validate ([test] extra)
import pytest
import yaml  # PyPI pyyaml ([test] extra)

from shipper import __version__

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
MANIFESTS = sorted([*K8S.glob("*.yaml"), *K8S.glob("variants/*.yaml")])
TEMPLATES = {
    "native": K8S / "pod-template-configmap.yaml",
    "pre-1.29": K8S / "variants" / "pod-template-pre-1.29.yaml",
    "cri": K8S / "variants" / "pod-template-cri-hostpath.yaml",
}
CAPTURE = ("native", "pre-1.29")  # the variants with base's capture wrapper
TEMPLATE_KEY = "pod-template.yaml"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def template_configmap(variant: str) -> dict[str, Any]:
    (cm,) = docs(TEMPLATES[variant])
    return cm


def pod(variant: str) -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load(template_configmap(variant)["data"][TEMPLATE_KEY])
    return out


def shipper_container(p: dict[str, Any]) -> dict[str, Any]:
    spec = p["spec"]
    found: list[dict[str, Any]] = [c for c in [*spec.get("initContainers", []), *spec["containers"]]
                                   if c["name"] == "shipper"]
    assert len(found) == 1
    return found[0]


def base_container(p: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = p["spec"]["containers"][0]
    return base


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def shipper_config_text(variant: str) -> str:
    text = env_of(shipper_container(pod(variant)))["SHIPPER_CONFIG"]
    assert isinstance(text, str)
    return text


def check_config(text: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIPPER_", "AIRFLOW_CTX_")) and k != "VECTOR_CONFIG"}
    return subprocess.run([sys.executable, "-m", "shipper", "check-config"], env={**env, "SHIPPER_CONFIG": text},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def effective_config(variant: str) -> dict[str, Any]:
    """What `shipper check-config` prints for the variant's SHIPPER_CONFIG."""
    done = check_config(shipper_config_text(variant))
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = tomllib.loads(done.stdout)
    return out


def mounts_by_path(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def mount_for(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount of `container` that holds `path` (the deepest one)."""
    p = PurePosixPath(path)
    best = None
    for mount_path, mount in mounts_by_path(container).items():
        if p.is_relative_to(mount_path) and p != PurePosixPath(mount_path):
            if best is None or len(mount_path) > len(best["mountPath"]):
                best = mount
    assert best is not None, f"{path} is on no volume mounted in container {container['name']}"
    return best


def volume(p: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in p["spec"]["volumes"] if v["name"] == name]
    assert len(found) == 1
    return found[0]


# --- 1. schemas ------------------------------------------------------------------------

CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("helm.toolkit.fluxcd.io/v2", "HelmRelease")}


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for i, d in enumerate(docs(path)):
            name = f"{path.relative_to(ROOT)}#{i}"
            out.append((name, d))
            if d.get("kind") == "ConfigMap" and TEMPLATE_KEY in d.get("data", {}):
                out.append((f"{name}:{TEMPLATE_KEY}", yaml.safe_load(d["data"][TEMPLATE_KEY])))
    return out


def test_manifests_exist() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "pod-template-configmap.yaml", "pod-template-pre-1.29.yaml", "pod-template-cri-hostpath.yaml",
        "podmonitor.yaml", "helmrelease-values.yaml"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "obj"), all_objects(), ids=[n for n, _ in all_objects()])
def test_every_manifest_validates(name: str, obj: dict[str, Any], version: str) -> None:
    if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
        pytest.skip(f"{obj['kind']} is a custom resource: no schema in kubernetes-validate; "
                    "its structure is checked by test_podmonitor / test_helmrelease")
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{name} is not a valid {obj['kind']} for Kubernetes {version}: {str(e)[:1500]}")


def test_every_object_is_a_known_kind() -> None:
    for name, obj in all_objects():
        known = (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS or obj["apiVersion"] == "v1"
        assert known, f"{name}: add a structure check for {obj['apiVersion']} {obj['kind']}"


# --- 2. the pod-template contract --------------------------------------------------------


@pytest.mark.parametrize("variant", TEMPLATES)
def test_base_is_the_first_container_and_keeps_the_executors_args(variant: str) -> None:
    p = pod(variant)
    assert p["kind"] == "Pod"
    assert p["spec"]["containers"][0]["name"] == "base"
    assert "args" not in base_container(p), "the executor sets base's args"
    assert p["spec"]["restartPolicy"] == "Never"
    assert template_configmap(variant)["metadata"]["name"] == "airflow-pod-template"


@pytest.mark.parametrize("variant", ["native", "cri"])
def test_native_sidecar_is_an_init_container_with_restart_policy_always(variant: str) -> None:
    p = pod(variant)
    (init,) = p["spec"]["initContainers"]
    assert init["name"] == "shipper"
    assert init["restartPolicy"] == "Always"
    assert [c["name"] for c in p["spec"]["containers"]] == ["base"]
    # Stopped by SIGTERM after base: a stop_file would let it exit on its own and
    # race the kubelet's restart of a sidecar (restartPolicy Always).
    assert not effective_config(variant)["stop_file"]


def test_pre_129_variant_runs_the_shipper_as_a_regular_container_stopped_by_the_sentinel() -> None:
    p = pod("pre-1.29")
    assert "initContainers" not in p["spec"], "without native sidecars an init container would block the task"
    assert [c["name"] for c in p["spec"]["containers"]] == ["base", "shipper"]
    shipper = shipper_container(p)
    assert "restartPolicy" not in shipper
    stop_file = effective_config("pre-1.29")["stop_file"]
    assert stop_file == env_of(base_container(p))["SHIPPER_CAPTURE_DIR"] + "/.done"
    pre_stop = " ".join(shipper["lifecycle"]["preStop"]["exec"]["command"])
    assert f"[ ! -e {stop_file} ]" in pre_stop, "preStop waits for the same sentinel"
    assert re.search(r"-lt (\d+) \]", pre_stop)
    waits = int(re.search(r"-lt (\d+) \]", pre_stop).group(1)) * 0.1  # type: ignore[union-attr]
    grace = p["spec"]["terminationGracePeriodSeconds"]
    assert waits + effective_config("pre-1.29")["shutdown_timeout"] < grace


@pytest.mark.parametrize("variant", TEMPLATES)
def test_resources_match_the_budget(variant: str) -> None:
    res = shipper_container(pod(variant))["resources"]
    assert res["requests"] == {"cpu": "5m", "memory": "20Mi"}
    limit = res["limits"]["memory"]
    assert re.fullmatch(r"\d+Mi", limit) and 20 <= int(limit[:-2]) <= 64
    assert "cpu" not in res["limits"], "no CPU limit: throttling would slow the final flush (docs/deployment.md)"


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    return int(users[-1])


@pytest.mark.parametrize("variant", TEMPLATES)
def test_security_context_is_restrictive(variant: str) -> None:
    sc = shipper_container(pod(variant))["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    if variant == "cri":
        assert sc["runAsUser"] == 0, "root only to read the runtime's 0640 log files (documented)"
    else:
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == _dockerfile_uid() != 0


@pytest.mark.parametrize("variant", TEMPLATES)
def test_image_is_the_shipper_at_the_package_version(variant: str) -> None:
    image = shipper_container(pod(variant))["image"]
    assert image.rsplit(":", 1)[1] == __version__
    assert shipper_container(pod(variant))["args"] == ["run"]


@pytest.mark.parametrize("variant", TEMPLATES)
def test_shipper_config_passes_check_config(variant: str) -> None:
    done = check_config(shipper_config_text(variant))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# effective configuration (from env SHIPPER_CONFIG)")


def test_cri_variant_reads_its_sources_in_the_cri_format() -> None:
    # The runtime's node log files are CRI lines; read raw, every entry would
    # keep the `<time> <stream> <P|F>` prefix and partial lines would not be joined.
    sources = effective_config("cri")["sources"]
    assert sources and all(s["format"] == "cri" for s in sources), sources


@pytest.mark.parametrize("variant", TEMPLATES)
def test_probes_and_port_match_the_metrics_listener(variant: str) -> None:
    c = shipper_container(pod(variant))
    host, _, port = effective_config(variant)["metrics"]["listen"].rpartition(":")
    assert host in ("0.0.0.0", "", "[::]", "::"), "the kubelet probes the pod IP, not loopback"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        ref = c[probe]["httpGet"]["port"]
        assert (ports[ref] if isinstance(ref, str) else ref) == int(port)
        assert c[probe]["timeoutSeconds"] >= 2 and c[probe]["failureThreshold"] >= 3
    assert "startupProbe" not in c, "a startup probe would delay every task (docs/deployment.md)"


@pytest.mark.parametrize("variant", TEMPLATES)
def test_annotations_file_is_the_downward_api_volume(variant: str) -> None:
    p = pod(variant)
    path = effective_config(variant)["airflow"]["annotations_file"]
    mount = mount_for(shipper_container(p), path)
    items = volume(p, mount["name"])["downwardAPI"]["items"]
    rel = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    assert {"path": rel, "fieldRef": {"fieldPath": "metadata.annotations"}} in items
    assert effective_config(variant)["airflow"]["labels"] == ["dag_id", "task_id"]


@pytest.mark.parametrize("variant", CAPTURE)
def test_sources_are_the_files_the_wrapper_writes_on_the_shared_volume(variant: str) -> None:
    p = pod(variant)
    shipper, base = shipper_container(p), base_container(p)
    capture_dir = env_of(base)["SHIPPER_CAPTURE_DIR"]
    base_mount = mount_for(base, capture_dir + "/x")
    assert base_mount["mountPath"] == capture_dir and not base_mount.get("readOnly")
    assert "emptyDir" in volume(p, base_mount["name"])
    sources = effective_config(variant)["sources"]
    assert {(s["stream"], PurePosixPath(s["path"]).name) for s in sources} == {
        ("stdout", "stdout.log"), ("stderr", "stderr.log")}
    for s in sources:
        m = mount_for(shipper, s["path"])
        assert m["name"] == base_mount["name"], "the shipper reads the volume base writes"
        assert m.get("readOnly") is True
        rel = PurePosixPath(s["path"]).relative_to(m["mountPath"])
        assert str(rel) == PurePosixPath(s["path"]).name == f"{s['stream']}.log"
    assert not any("/proc/" in s["path"] for s in sources), "never the task's pipes (FACTS §1)"


def test_cri_variant_reads_its_own_pods_log_directory_only() -> None:
    p = pod("cri")
    shipper = shipper_container(p)
    (source,) = effective_config("cri")["sources"]
    m = mount_for(shipper, source["path"])
    assert m["readOnly"] is True
    assert m["subPathExpr"] == "$(POD_NAMESPACE)_$(POD_NAME)_$(POD_UID)"
    env = env_of(shipper)
    for var, field in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name"),
                       ("POD_UID", "metadata.uid")):
        assert env[var] == {"fieldRef": {"fieldPath": field}}
    assert volume(p, m["name"])["hostPath"] == {"path": "/var/log/pods", "type": "Directory"}
    assert PurePosixPath(source["path"]).relative_to(m["mountPath"]) == PurePosixPath("base/0.log")
    assert "command" not in base_container(p), "no wrapper: the runtime is the only reader of base's pipes"
    assert 'format = "cri"' in shipper_config_text("cri")


def test_capture_wrapper_is_the_same_in_every_capture_variant() -> None:
    commands = [base_container(pod(v))["command"] for v in CAPTURE]
    assert all(c == commands[0] for c in commands)
    command = commands[0]
    assert command[:2] == ["/bin/bash", "-c"]
    # $0, then the official image's ENTRYPOINT: the executor's args follow.
    assert command[3:] == ["shipper-capture", "/usr/bin/dumb-init", "--", "/entrypoint"]


def test_podmonitor() -> None:
    (pm,) = docs(K8S / "podmonitor.yaml")
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert set(pm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(pm["spec"]) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}
    assert pm["metadata"]["namespace"] == template_configmap("native")["metadata"]["namespace"]
    for variant in TEMPLATES:
        p = pod(variant)
        labels = p["metadata"]["labels"]
        for k, v in pm["spec"]["selector"]["matchLabels"].items():
            assert labels.get(k) == v, f"PodMonitor does not select the {variant} template's pods"
        port_names = {port["name"] for port in shipper_container(p)["ports"]}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
            assert ep["port"] in port_names
            assert ep["path"] == "/metrics"
            assert re.fullmatch(r"\d+s", ep["interval"]) and re.fullmatch(r"\d+s", ep["scrapeTimeout"])
            for r in ep.get("relabelings", []):
                assert set(r) <= {"sourceLabels", "targetLabel", "regex", "replacement", "action"}
    assert pm["spec"]["namespaceSelector"]["matchNames"] == [pm["metadata"]["namespace"]]


def test_helmrelease_points_the_executor_at_the_configmap() -> None:
    (hr,) = docs(K8S / "helmrelease-values.yaml")
    assert (hr["apiVersion"], hr["kind"]) == ("helm.toolkit.fluxcd.io/v2", "HelmRelease")
    values = hr["spec"]["values"]
    template_file = PurePosixPath(values["config"]["kubernetes_executor"]["pod_template_file"])
    (mount,) = values["scheduler"]["extraVolumeMounts"]
    (vol,) = values["scheduler"]["extraVolumes"]
    assert mount["name"] == vol["name"]
    assert template_file.parent == PurePosixPath(mount["mountPath"])
    assert vol["configMap"]["name"] == template_configmap("native")["metadata"]["name"]
    assert template_file.name == TEMPLATE_KEY
    assert hr["metadata"]["namespace"] == template_configmap("native")["metadata"]["namespace"]
    assert "workers" not in values, "the official chart has no workers.podTemplate (docs/deployment.md)"


# --- endpoints the probes hit, served by a real shipper ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_probe_paths_are_served_by_the_shipper_running_the_manifests_config(tmp_path: Path) -> None:
    """The native template's config, with paths moved to tmp and the console sink."""
    port = _free_port()
    text = shipper_config_text("native")
    text = text.replace("/var/log/task", str(tmp_path)).replace('"0.0.0.0:9337"', f'"127.0.0.1:{port}"')
    text = text.replace("/etc/podinfo/annotations", str(tmp_path / "annotations"))
    text += '\n[sink]\ntype = "console"\n'
    (tmp_path / "annotations").write_text('dag_id="etl"\ntask_id="load"\n')
    for name in ("stdout.log", "stderr.log"):
        (tmp_path / name).write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "run"], env={"SHIPPER_CONFIG": text, "PATH": ""},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        c = shipper_container(pod("native"))
        deadline = time.monotonic() + 20
        while True:
            try:
                status = _get(f"http://127.0.0.1:{port}{c['livenessProbe']['httpGet']['path']}")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no metrics endpoint"
                time.sleep(0.1)
        assert status == 200
        assert _get(f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}") in (200, 503)
        assert _get(f"http://127.0.0.1:{port}/metrics") == 200
        assert _get(f"http://127.0.0.1:{port}/no-such-endpoint") == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


# --- 3. the capture wrapper, run for real -----------------------------------------------

WRAPPER = base_container(pod("native"))["command"]


def run_wrapper(capture_dir: Path, *task: str, drain: int | None = None, stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPPER_CAPTURE_DIR": str(capture_dir)}
    if drain is not None:
        env["SHIPPER_CAPTURE_DRAIN_SECONDS"] = str(drain)
    # The manifest's command up to $0, then the task instead of dumb-init -- /entrypoint <args>.
    return subprocess.run([*WRAPPER[:4], *task], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def start_wrapper(capture_dir: Path, *task: str, pipes: bool = True) -> subprocess.Popen[str]:
    env = {**os.environ, "SHIPPER_CAPTURE_DIR": str(capture_dir)}
    out = subprocess.PIPE if pipes else subprocess.DEVNULL
    return subprocess.Popen([*WRAPPER[:4], *task], env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=out, text=True)


def test_wrapper_copies_both_streams_separately_passes_them_through_and_keeps_the_exit_code(
        tmp_path: Path) -> None:
    task = "echo out1; echo err1 >&2; printf 'out2 no newline'; printf 'err2\\n' >&2; exit 3"
    done = run_wrapper(tmp_path, "bash", "-c", task)
    assert done.returncode == 3
    assert done.stdout == "out1\nout2 no newline"
    assert done.stderr == "err1\nerr2\n"
    assert (tmp_path / "stdout.log").read_text() == done.stdout
    assert (tmp_path / "stderr.log").read_text() == done.stderr
    assert (tmp_path / ".done").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".done", "stderr.log", "stdout.log"]
    assert (tmp_path / "stdout.log").stat().st_mode & 0o044 == 0o044, "readable by the shipper's uid"


def test_wrapper_loses_nothing_of_a_large_interleaved_output(tmp_path: Path) -> None:
    n = 20000
    task = ("import sys\n"
            f"for i in range({n}):\n"
            "    print(f'out {i} ' + 'x' * (i % 300))\n"
            "    print(f'err {i}', file=sys.stderr)\n"
            "    if i % 1000 == 0: sys.stdout.flush(); sys.stderr.flush()\n")
    done = run_wrapper(tmp_path, sys.executable, "-c", task)
    assert done.returncode == 0
    out = (tmp_path / "stdout.log").read_text().splitlines()
    err = (tmp_path / "stderr.log").read_text().splitlines()
    assert out == [f"out {i} " + "x" * (i % 300) for i in range(n)]
    assert err == [f"err {i}" for i in range(n)]
    assert done.stdout.splitlines() == out and done.stderr.splitlines() == err


def test_sentinel_appears_only_once_both_files_are_complete(tmp_path: Path) -> None:
    # A last burst right before exit: the sentinel must not be seen before it is in the files.
    task = ("import sys, time\n"
            "time.sleep(0.3)\n"
            "sys.stdout.write('a' * 100 + '\\n' * 1 + ('b' * 200 + '\\n') * 5000)\n"
            "sys.stderr.write(('e' * 50 + '\\n') * 5000)\n")
    proc = start_wrapper(tmp_path, sys.executable, "-c", task, pipes=False)
    sentinel = tmp_path / ".done"
    sizes_when_seen = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sentinel.exists():
            sizes_when_seen = ((tmp_path / "stdout.log").stat().st_size, (tmp_path / "stderr.log").stat().st_size)
            break
        time.sleep(0.001)
    proc.communicate(timeout=30)
    assert sizes_when_seen == (101 + 201 * 5000, 51 * 5000)
    assert proc.returncode == 0


def test_sigterm_is_forwarded_to_the_task_and_its_last_lines_are_kept(tmp_path: Path) -> None:
    task = ("import signal, sys, time\n"
            "def stop(signum, frame):\n"
            "    print('got SIGTERM, cleaning up', flush=True)\n"
            "    print('last error line', file=sys.stderr, flush=True)\n"
            "    sys.exit(7)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n")
    proc = start_wrapper(tmp_path, sys.executable, "-c", task)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGTERM)  # what the kubelet does to base's PID 1
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, "the task's own exit code, not bash's 143"
    assert rest == "got SIGTERM, cleaning up\n" and err == "last error line\n"
    assert (tmp_path / "stdout.log").read_text() == "started\ngot SIGTERM, cleaning up\n"
    assert (tmp_path / "stderr.log").read_text() == "last error line\n"
    assert (tmp_path / ".done").exists()


def test_task_killed_by_a_signal_exits_128_plus_n_with_the_sentinel(tmp_path: Path) -> None:
    done = run_wrapper(tmp_path, "bash", "-c", "echo before; kill -KILL $$")
    assert done.returncode == 128 + signal.SIGKILL
    assert (tmp_path / "stdout.log").read_text() == "before\n"
    assert (tmp_path / ".done").exists()


def test_task_sees_default_sigint_and_the_containers_stdin(tmp_path: Path) -> None:
    task = ("import signal, sys\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
            "print(sys.stdin.read().strip())\n")
    done = run_wrapper(tmp_path, sys.executable, "-c", task, stdin="from stdin\n")
    assert done.stdout == "True\nfrom stdin\n"


def test_a_process_left_holding_stdout_does_not_hang_the_pod(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run_wrapper(tmp_path, "bash", "-c", "echo main; (sleep 30; echo late) & echo bye", drain=1)
    assert time.monotonic() - started < 10
    assert done.returncode == 0
    assert (tmp_path / "stdout.log").read_text() == "main\nbye\n"
    assert (tmp_path / ".done").exists()
    assert "not waiting" in done.stderr


def test_without_a_capture_dir_the_task_still_runs(tmp_path: Path) -> None:
    done = run_wrapper(tmp_path / "missing", "bash", "-c", "echo out; echo err >&2; exit 5")
    assert done.returncode == 5
    assert done.stdout == "out\n"
    assert done.stderr.endswith("err\n") and "without capture" in done.stderr


def test_a_rerun_starts_from_a_fresh_sentinel(tmp_path: Path) -> None:
    (tmp_path / ".done").write_text("")
    proc = start_wrapper(tmp_path, "bash", "-c", "sleep 0.5; echo hi")
    time.sleep(0.2)
    assert not (tmp_path / ".done").exists(), "a stale sentinel would stop the shipper at once"
    proc.communicate(timeout=30)
    assert (tmp_path / ".done").exists()


# --- the pre-1.29 flow end to end: wrapper + real shipper + stop_file -------------------


def test_pre_129_flow_ships_everything_and_the_shipper_exits_by_itself(tmp_path: Path) -> None:
    text = shipper_config_text("pre-1.29").replace("/var/log/task", str(tmp_path))
    text = text.replace('"0.0.0.0:9337"', '"127.0.0.1:0"').replace("/etc/podinfo", str(tmp_path))
    text += '\n[sink]\ntype = "console"\n'
    (tmp_path / "annotations").write_text('dag_id="etl"\ntask_id="load"\nrun_id="manual__1"\n')
    shipper = subprocess.Popen([sys.executable, "-m", "shipper", "run"], env={"SHIPPER_CONFIG": text, "PATH": ""},
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        task = "for i in $(seq 1 500); do echo \"line $i\"; echo \"warn $i\" >&2; done; exit 1"
        done = run_wrapper(tmp_path, "bash", "-c", task)
        assert done.returncode == 1
        out, err = shipper.communicate(timeout=60)  # no signal: the sentinel stops it
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.communicate()
    assert shipper.returncode == 0, err
    lines: dict[str, list[str]] = {}
    for push in out.splitlines():
        for stream in json.loads(push)["streams"]:
            lines.setdefault(stream["labels"], []).extend(e["line"] for e in stream["entries"])
    stdout_streams = [k for k in lines if 'stream="stdout"' in k]
    stderr_streams = [k for k in lines if 'stream="stderr"' in k]
    assert len(stdout_streams) == len(stderr_streams) == 1
    assert 'dag_id="etl"' in stdout_streams[0] and 'task_id="load"' in stdout_streams[0]
    assert lines[stdout_streams[0]] == [f"line {i}" for i in range(1, 501)]
    assert lines[stderr_streams[0]] == [f"warn {i}" for i in range(1, 501)]


# --- Grafana dashboard and Loki rules: only labels and fields the shipper emits ---------

DASHBOARD = K8S / "grafana-dashboard.json"
RULES = K8S / "loki-rules.yaml"
AIRFLOW2_ERROR = "[2024-06-12T13:00:00.123+0000] {taskinstance.py:123} ERROR - Task failed"


def _flatten(record: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in record.items():
        out |= _flatten(v, f"{prefix}{k}_") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.fixture
async def emitted(tmp_path: Path) -> dict[str, Any]:
    """Labels, metadata and summary fields of a real run with the native template's config,
    pushed to the strict test receiver (the exit summary is pushed only to Loki)."""
    from tests.loki_receiver import LokiReceiver

    rx = LokiReceiver()
    await rx.start()
    try:
        text = shipper_config_text("native").replace("/var/log/task", str(tmp_path))
        text = text.replace('"0.0.0.0:9337"', '"127.0.0.1:0"').replace("/etc/podinfo", str(tmp_path))
        text = re.sub(r'url = "[^"]*"', f'url = "{rx.url}"', text)
        (tmp_path / "annotations").write_text('dag_id="etl"\ntask_id="load"\nrun_id="manual__1"\n'
                                              'try_number="1"\nmap_index="3"\n')
        (tmp_path / "stdout.log").write_text("hello\n" + AIRFLOW2_ERROR + "\n")
        (tmp_path / "stderr.log").write_text(AIRFLOW2_ERROR + "\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipper", "run", env={"SHIPPER_CONFIG": text, "PATH": ""},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await rx.wait_for_entries(3, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        await rx.wait_for_entries(1, timeout=30, job="shipper")
        streams = rx.streams()
    finally:
        await rx.stop()
    label_sets = [dict(key) for key in streams]
    metadata = {name for entries in streams.values() for e in entries for name, _ in e.metadata}
    (summary_entry,) = [e for key, entries in streams.items() if dict(key).get("job") == "shipper" for e in entries]
    return {"labels": {n for ls in label_sets for n in ls}, "label_sets": label_sets, "metadata": metadata,
            "summary_fields": _flatten(json.loads(summary_entry.line))}


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def _rules() -> list[dict[str, Any]]:
    (cm,) = docs(RULES)
    out: list[dict[str, Any]] = []
    for text in cm["data"].values():
        for group in yaml.safe_load(text)["groups"]:
            out += group["rules"]
    return out


def _selectors(expr: str) -> list[dict[str, tuple[str, str]]]:
    """Stream selectors {name op "value", ...} of a LogQL expression."""
    out = []
    for body in re.findall(r"\{([^{}]*)\}", expr):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body)
        assert matchers, f"empty or unparsed selector {{{body}}} in {expr}"
        out.append({name: (op, value) for name, op, value in matchers})
    return out


_STAGE_WORDS = {"json", "logfmt", "unwrap", "line_format", "label_format", "pattern", "regexp", "__error__",
                "by", "without", "or", "and", "unpack", "decolorize", "drop", "keep"}


def _pipeline_fields(expr: str) -> set[str]:
    """Names a pipeline filters on (`| name op ...`, `or name op ...`) or unwraps."""
    stripped = re.sub(r"\{[^{}]*\}", "", expr)
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', stripped)
    names = set(re.findall(r"(?:\||\bor\b|\band\b)\s*([A-Za-z_]\w*)\s*(?:=~|!~|!=|==|>=|<=|=|>|<)", stripped))
    names |= set(re.findall(r"\bunwrap\s+([A-Za-z_]\w*)", stripped))
    return names - _STAGE_WORDS


def _grouping(expr: str) -> set[str]:
    return {n.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for n in group.split(",")}


def test_dashboard_has_the_seeds_panels_and_variables() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dash["panels"]}
    assert {"Recent task executions", "Error log stream", "DAG execution overview",
            "Task duration trends"} <= titles
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"dag_id", "task_id"} <= set(variables)
    assert "$dag_id" in variables["task_id"]["query"]["query"], "task_id is filtered by the selected DAG"
    assert dash["time"]["from"].startswith("now-")
    for p in dash["panels"]:
        for t in p["targets"]:
            assert t["datasource"]["type"] == "loki"


def test_dashboard_and_rules_select_only_what_the_shipper_emits(emitted: dict[str, Any]) -> None:
    exprs = _dashboard_exprs() + [r["expr"] for r in _rules()]
    assert exprs
    filterable = emitted["metadata"] | emitted["summary_fields"] | emitted["labels"]
    for expr in exprs:
        selectors = _selectors(expr)
        assert selectors, f"no stream selector in {expr}"
        for sel in selectors:
            unknown = set(sel) - emitted["labels"]
            assert not unknown, f"{expr}: selects on {unknown}, the shipper emits labels {emitted['labels']}"
            # Literal values must match what was emitted (variables stand for any).
            for name, (op, value) in sel.items():
                if op == "=" and "$" not in value:
                    assert any(ls.get(name) == value for ls in emitted["label_sets"]), f"{name}={value!r}"
        unknown = _pipeline_fields(expr) - filterable
        assert not unknown, f"{expr}: filters on {unknown}, not a label, metadata or summary field"
        by = _grouping(expr)
        assert by <= filterable, f"{expr}: groups by {by - filterable}"
    # `level` is what the "Error log stream" panel and the error alerts filter on.
    assert emitted["metadata"] >= {"run_id", "try_number", "map_index", "level"}, emitted["metadata"]


def test_dropped_lines_alert_covers_every_drop_reason() -> None:
    from shipper.events import DROP_REASONS

    (rule,) = [r for r in _rules() if r["alert"] == "AirflowTaskLogLinesDropped"]
    for reason in DROP_REASONS:
        assert f"dropped_{reason} > 0" in rule["expr"], reason
    (panel,) = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == "Task runs with lines dropped"]
    for reason in DROP_REASONS:
        assert f"dropped_{reason} > 0" in panel["targets"][0]["expr"], reason


def test_rules_are_well_formed_alerts() -> None:
    (cm,) = docs(RULES)
    assert cm["metadata"]["labels"]["loki_rule"] == "1"
    rules = _rules()
    assert {r["alert"] for r in rules} >= {"AirflowTaskFailed", "AirflowTaskLogLinesDropped"}
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert r["annotations"]["summary"]
        assert re.search(r"\)\s*>\s*0\s*$", r["expr"].strip()), "an alert is a threshold on a metric query"
        for label in re.findall(r"\$labels\.(\w+)", json.dumps(r["annotations"])):
            assert label in _grouping(r["expr"]), f"{r['alert']}: $labels.{label} is not kept by the query"


def _logql_parser() -> Path | None:
    """node + @grafana/lezer-logql (Grafana's LogQL grammar), if installed (see .ci/run)."""
    node = shutil.which("node")
    candidates = [ROOT / ".ci" / "node" / "node_modules", *(Path(p) for p in os.environ.get("NODE_PATH", "").split(":") if p)]
    for c in candidates:
        if node and (c / "@grafana" / "lezer-logql").is_dir():
            return c
    return None


def test_every_logql_expression_parses() -> None:
    modules = _logql_parser()
    if modules is None:
        pytest.skip("needs node and @grafana/lezer-logql (npm install --prefix .ci/node @grafana/lezer-logql@0.4.2)")
    exprs = _dashboard_exprs() + [r["expr"] for r in _rules()]
    # Grafana's label_values(<selector>, <label>) variable queries: the selector is LogQL.
    exprs = [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", e) for e in exprs]
    # Grafana's variables stand for a duration or a regex.
    exprs = [e.replace("$__interval", "1m").replace("$__range", "1h").replace("$dag_id", ".+")
             .replace("$task_id", ".+") for e in exprs]
    script = (
        "const {parser} = require('@grafana/lezer-logql');"
        "const exprs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const bad = [];"
        "for (const e of exprs) { let err = -1;"
        "  parser.parse(e).iterate({enter: (n) => { if (n.type.isError && err < 0) err = n.from; }});"
        "  if (err >= 0) bad.push([e, err]); }"
        "console.log(JSON.stringify(bad));")
    done = subprocess.run(["node", "-e", script], input=json.dumps(exprs), capture_output=True, text=True,
                          env={**os.environ, "NODE_PATH": str(modules)}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    bad = json.loads(done.stdout)
    assert not bad, "LogQL syntax errors (expression, offset): " + json.dumps(bad, indent=1)


def test_no_query_looks_for_what_a_task_pod_never_prints() -> None:
    # FACTS §2: `TaskInstance Finished` / `DagRun Finished` come from the scheduler; Airflow 3 never
    # prints `Marking task as FAILED` (and Airflow 2 prints it besides `Task failed with exception`,
    # so counting both counts one failure twice); `ERROR` in the text misses Airflow 3's
    # `"level": "error"` and finds prints. Errors are found by the `level` metadata.
    exprs = _dashboard_exprs() + [r["expr"] for r in _rules()]
    for expr in exprs:
        for never in ("TaskInstance Finished", "DagRun Finished", "Marking task as FAILED", '"ERROR', "ERROR|"):
            assert never not in expr, (never, expr)
    failures = [e for e in exprs if "Task failed with exception" in e]
    assert len(failures) == 2  # the "Failed task tries" panel and the AirflowTaskFailed alert
    for expr in failures:
        assert '| level="error" |= "Task failed with exception"' in " ".join(expr.split())
    for expr in exprs:  # task streams by their service_name, summaries by job
        for sel in _selectors(expr):
            assert sel.get("service_name") == ("=", "airflow") or sel.get("job") == ("=", "shipper"), expr
