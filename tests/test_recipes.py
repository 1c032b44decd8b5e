"""The recipes run: each is parsed, every electricctl command and flag it names exists (and its
`--help` runs), and each is checked by its own tool where the machine has it (systemd-analyze), else
by its structure (GitHub Actions, Kubernetes, compose, the Airflow DAG without Airflow)."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from electricctl import api
from electricctl.cli.main import cli

RECIPES = Path(__file__).parents[1] / "recipes"
_SHELL_END = re.compile(r"[)|;>&#]")


def invocations_in_shell(script: str) -> list[list[str]]:
    """Every `electricctl ...` command line in a shell script (up to a pipe, redirect or ;)."""
    found = []
    for line in script.splitlines():
        at = line.find("electricctl ")
        while at != -1:
            rest = line[at:]
            end = _SHELL_END.search(rest)
            found.append(shlex.split(rest[: end.start()] if end else rest))
            at = line.find("electricctl ", at + len("electricctl "))
    return found


def check(argv: list[str], where: str) -> str:
    """``argv`` (starting with electricctl) names a command and flags that exist; the command."""
    assert argv[0].endswith("electricctl"), where
    name = argv[1]
    command = cli.commands.get(name)
    assert command is not None, f"{where}: no command `electricctl {name}`"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in argv[2:]:
        if token.startswith("-") and not re.fullmatch(r"-\d+", token):
            flag = token.split("=", 1)[0]
            assert flag in known, f"{where}: `electricctl {name}` has no option {flag}"
    return name


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def every_invocation() -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    workflow = yaml_docs(RECIPES / "github-actions" / "electricctl.yml")[0]
    for job, spec in workflow["jobs"].items():
        for step in spec["steps"]:
            for argv in invocations_in_shell(step.get("run", "")):
                out.append((f"github-actions job {job}", argv))
    unit = (RECIPES / "systemd" / "electricctl-serve.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    out.append(("systemd ExecStart", shlex.split(exec_start)))
    for doc in yaml_docs(RECIPES / "kubernetes" / "electricctl.yaml"):
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            out.append((f"kubernetes {doc['kind']} {doc['metadata']['name']}", [str(x) for x in c["command"]]))
    compose = yaml_docs(RECIPES / "compose" / "docker-compose.yml")[0]
    for name, svc in compose["services"].items():
        if svc.get("command") and svc["command"][0] == "electricctl":
            out.append((f"compose service {name}", [str(x) for x in svc["command"]]))
    for text in (RECIPES / "todo" / "README.md").read_text().split("```")[1::2]:
        for argv in invocations_in_shell(text):
            out.append(("recipes/todo/README.md", argv))
    return out


def test_every_command_and_flag_the_recipes_name_exists_and_its_help_runs() -> None:
    invocations = every_invocation()
    assert len(invocations) >= 10
    commands = {check(argv, where) for where, argv in invocations}
    assert {"validate", "plan", "apply", "status", "serve", "generate", "token"} <= commands
    for name in sorted(commands):
        helped = subprocess.run(
            [sys.executable, "-m", "electricctl", name, "--help"], capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0, helped.stderr


def test_the_github_workflow_validates_without_secrets_and_gates_apply_on_the_plan() -> None:
    workflow = yaml_docs(RECIPES / "github-actions" / "electricctl.yml")[0]
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"}
    jobs = workflow["jobs"]
    assert all("runs-on" in spec and spec["steps"] for spec in jobs.values())
    validate_env = [step.get("env", {}) for step in jobs["validate"]["steps"]]
    assert not any(validate_env), "validate must run without secrets (pull requests from forks have none)"
    plan_steps = " ".join(step.get("run", "") for step in jobs["plan"]["steps"])
    assert "-o markdown" in plan_steps and "gh pr comment" in plan_steps
    apply_run = " ".join(step.get("run", "") for step in jobs["apply"]["steps"])
    assert "--detailed-exitcode" in apply_run and "2) electricctl apply" in apply_run
    if shutil.which("actionlint"):
        done = subprocess.run(["actionlint", str(RECIPES / "github-actions" / "electricctl.yml")], capture_output=True)
        assert done.returncode == 0, done.stdout


def test_the_kubernetes_manifests_are_well_formed_and_probe_health() -> None:
    docs = yaml_docs(RECIPES / "kubernetes" / "electricctl.yaml")
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Job", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    scrape = deploy["spec"]["template"]["metadata"]["annotations"]  # Prometheus finds GET /metrics
    assert scrape["prometheus.io/path"] == "/metrics"
    assert int(scrape["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    assert "--host" in container["command"]  # serve binds to loopback unless told otherwise
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    from electricctl._config.loader import load_text

    load_text(config_map["data"]["electric.yaml"], "configmap:electric.yaml", env={}, strict_env=False)
    if shutil.which("kubeconform"):
        done = subprocess.run(["kubeconform", "-strict", str(RECIPES / "kubernetes" / "electricctl.yaml")])
        assert done.returncode == 0


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not on this machine")
    unit = (RECIPES / "systemd" / "electricctl-serve.service").read_text()
    # the unit names the installed binary; point it at this checkout's so verify can find it
    unit = unit.replace("/usr/local/bin/electricctl", str(Path(sys.executable).parent / "electricctl"))
    path = tmp_path / "electricctl-serve.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "electricctl-serve.service" in line and "EnvironmentFile" not in line
    ]
    assert not problems, "\n".join(problems)


def test_the_airflow_dag_calls_the_python_api_as_it_is() -> None:
    source = (RECIPES / "airflow" / "electricctl_dag.py").read_text()
    try:
        import airflow  # noqa: F401
    except ImportError:
        tree = ast.parse(source)
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "electricctl"
        ]
        assert {c.func.attr for c in calls} == {"apply", "plan", "validate"}  # type: ignore[attr-defined]
        for c in calls:
            fn = getattr(api, c.func.attr)  # type: ignore[attr-defined]
            inspect.signature(fn).bind(*[None] * len(c.args), **{k.arg: None for k in c.keywords if k.arg})
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        assert {"CHANGES", "OK"} <= names and hasattr(api, "CHANGES") and hasattr(api, "OK")
    else:  # pragma: no cover - only where Airflow is installed
        import importlib.util

        spec = importlib.util.spec_from_file_location("electricctl_dag", RECIPES / "airflow" / "electricctl_dag.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.dag.dag_id == "electricctl_reconcile"
