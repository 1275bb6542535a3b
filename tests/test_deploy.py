"""Static checks of the deployment recipes in ``deploy/``.

Nothing here needs Docker, Kubernetes or SLURM. The checks:

1. every YAML file parses and has the structure its tool expects (Compose services, a
   ``DaskJob`` with ``spec.job`` and ``spec.cluster``, a ``PersistentVolumeClaim``), and the
   store is reachable from every worker;
2. every ``daskgauss <subcommand> ...`` written anywhere in ``deploy/`` (Dockerfile, Compose
   file, Kubernetes manifests, sbatch script, README code blocks, the jobqueue example) uses
   only options that the installed ``daskgauss <subcommand> --help`` lists;
3. likewise every ``dask scheduler`` / ``dask worker`` command against ``dask ... --help``,
   and every worker is started with ``--preload daskgauss.preload``;
4. the dask-jobqueue example compiles, imports without dask-jobqueue, and calls the Python API
   with parameters it has;
5. the Dockerfile installs the project from the build context and pins the thread pools.

Commands are found in shell text (with ``\\`` continuations and trailing comments), in YAML
strings (``sh -c "..."``) and in YAML list-form commands (``args: [daskgauss, render, ...]``).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import io
import json
import py_compile
import re
import shlex
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "docker-compose.yml"
DASKJOB = DEPLOY / "kubernetes" / "daskjob.yaml"
PVC = DEPLOY / "kubernetes" / "pvc.yaml"
SBATCH = DEPLOY / "slurm" / "render.sbatch"
JOBQUEUE = DEPLOY / "slurm" / "jobqueue_example.py"
README = DEPLOY / "README.md"

THREAD_PINS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PRELOAD = "daskgauss.preload"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
RECIPE_FILES = sorted(
    path
    for path in DEPLOY.rglob("*")
    if path.is_file()
    and (path.suffix in {".yaml", ".yml", ".md", ".py", ".sbatch", ".sh"} or path == DOCKERFILE)
)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------------------------
# What the installed command-line tools accept
# --------------------------------------------------------------------------------------------

# Click help: options sit in a column indented by two spaces ("  --name TEXT  help"); help
# text that wraps is indented further, so it is not mistaken for an option.
_OPTION_COLUMN = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)", re.MULTILINE)
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")


def _help(*module_and_args: str) -> str:
    command = [sys.executable, "-m", *module_and_args, "--help"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, (
        f"`{' '.join(command[1:])}` failed (exit {proc.returncode}); the recipes in deploy/ "
        f"use this command line.\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def _options(help_text: str) -> frozenset[str]:
    flags: set[str] = set()
    for match in _OPTION_COLUMN.finditer(help_text):
        flags.update(_FLAG.findall(match.group(1)))
    return frozenset(flags)


def _subcommands(help_text: str) -> frozenset[str]:
    section = re.search(r"^Commands:\n((?:[ \t]+\S.*\n?)+)", help_text, re.MULTILINE)
    assert section, f"no Commands: section in\n{help_text}"
    return frozenset(
        line.split()[0] for line in section.group(1).splitlines() if re.match(r"^  \S", line)
    )


@functools.cache
def daskgauss_cli() -> dict[str, frozenset[str]]:
    """Subcommand -> options, from the real ``python -m daskgauss ... --help``."""
    return {sub: _options(_help("daskgauss", sub)) for sub in _subcommands(_help("daskgauss"))}


@functools.cache
def dask_cli() -> dict[str, frozenset[str]]:
    """``dask scheduler`` and ``dask worker`` options, from the installed distributed."""
    return {sub: _options(_help("dask", sub)) for sub in ("scheduler", "worker")}


# --------------------------------------------------------------------------------------------
# Finding command lines in the recipes
# --------------------------------------------------------------------------------------------

_SEPARATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "2>&1", "then", "do"}
_PUNCTUATION = "`'\"()[]{},"
_SUBCOMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")
# "docker run daskgauss dask worker ...": there daskgauss is the image, not the command.
_PROGRAMS = {"dask", "daskgauss", "python", "python3", "sh", "bash", "srun", "tini"}


@dataclass(frozen=True)
class Invocation:
    """One ``daskgauss SUB ...`` or ``dask scheduler|worker ...`` command found in a file."""

    where: str
    program: str  # "daskgauss" or "dask"
    subcommand: str
    words: tuple[str, ...]  # the words after the subcommand, up to a shell separator

    @property
    def flags(self) -> list[str]:
        found = []
        for word in self.words:
            match = re.match(r"^(--?[A-Za-z][\w-]*)", word.strip(_PUNCTUATION))
            if word.startswith("-") and match:
                found.append(match.group(1))
        return found

    def value(self, flag: str) -> str | None:
        """The word after ``flag`` (or after ``flag=``), None if the flag is not given."""
        for i, word in enumerate(self.words):
            if word == flag and i + 1 < len(self.words):
                return self.words[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
        return None

    @property
    def positionals(self) -> list[str]:
        """Words before the first option: CENTRES STORE for ``render``, as written here."""
        out = []
        for word in self.words:
            if word.startswith("-"):
                break
            out.append(word)
        return out

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {self.subcommand} {' '.join(self.words)}"


def _logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations joined and comment markers dropped.

    Comments are kept as text (a commented example command is checked like any other).
    """
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"^#+\s?", "", raw.strip())
        if line.endswith("\\"):
            pending += line.rstrip("\\") + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError:  # unbalanced quotes in prose
        return line.split()


def _invocations_in_words(words: list[str], where: str) -> Iterator[Invocation]:
    for i, word in enumerate(words):
        name = Path(word.strip(_PUNCTUATION)).name if word.strip(_PUNCTUATION) else ""
        following = words[i + 1] if i + 1 < len(words) else ""
        if following in _PROGRAMS:
            continue
        if name == "daskgauss" and _SUBCOMMAND_WORD.fullmatch(following):
            program, sub, start = "daskgauss", following, i + 2
        elif name == "dask" and following in ("scheduler", "worker"):
            program, sub, start = "dask", following, i + 2
        elif name in ("dask-scheduler", "dask-worker"):
            program, sub, start = "dask", name.removeprefix("dask-"), i + 1
        elif name in ("distributed.cli.dask_scheduler", "distributed.cli.dask_worker"):
            program, sub, start = "dask", name.rsplit("_", 1)[1], i + 1
        else:
            continue
        rest: list[str] = []
        for token in words[start:]:
            if token in _SEPARATORS or token.startswith("#"):
                break
            if token.endswith(";") or token.endswith("&&"):
                rest.append(token.rstrip(";&"))
                break
            rest.append(token)
        yield Invocation(where, program, sub, tuple(rest))


def _invocations_in_text(text: str, where: str) -> Iterator[Invocation]:
    for line in _logical_lines(text):
        yield from _invocations_in_words(_split(line), where)


def _invocations_in_yaml(node: object, where: str) -> Iterator[Invocation]:
    """Walk parsed YAML: list-form commands as words, every string as shell text."""
    if isinstance(node, dict):
        command, args = node.get("command"), node.get("args")
        if isinstance(command, list) and isinstance(args, list):  # Kubernetes command + args
            yield from _invocations_in_words([str(w) for w in command + args], where)
        for value in node.values():
            yield from _invocations_in_yaml(value, where)
    elif isinstance(node, list):
        if node and all(isinstance(item, str | int | float) for item in node):
            yield from _invocations_in_words([str(item) for item in node], where)
        for item in node:
            yield from _invocations_in_yaml(item, where)
    elif isinstance(node, str):
        yield from _invocations_in_text(node, where)


def _dockerfile_invocations(text: str, where: str) -> Iterator[Invocation]:
    for line in _logical_lines(text):
        exec_form = re.match(r"^(?:RUN|CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line)
        if exec_form:
            yield from _invocations_in_words([str(w) for w in json.loads(exec_form[1])], where)
        else:
            yield from _invocations_in_words(_split(line), where)


def _python_invocations(text: str, where: str) -> Iterator[Invocation]:
    """String constants (docstrings included) and comments of a Python file."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from _invocations_in_text(node.value, where)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield from _invocations_in_text(token.string, where)
    # dask-jobqueue assembles the worker command itself; its extra arguments are worker flags.
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.keyword) and node.arg == "worker_extra_args":
            extra = [str(w) for w in ast.literal_eval(node.value)]
            yield Invocation(f"{where} (worker_extra_args)", "dask", "worker", tuple(extra))


def _markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL))


def invocations(path: Path) -> list[Invocation]:
    """Every command line of interest in one recipe file (duplicates removed)."""
    where = _rel(path)
    text = path.read_text()
    if path == DOCKERFILE:
        found = list(_dockerfile_invocations(text, where))
    elif path.suffix in {".yaml", ".yml"}:
        found = list(_invocations_in_text(text, where))  # comments and block scalars
        for document in yaml.safe_load_all(text):
            found += _invocations_in_yaml(document, where)
    elif path.suffix == ".md":
        found = list(_invocations_in_text(_markdown_code(text), where))
    elif path.suffix == ".py":
        found = list(_python_invocations(text, where))
    else:
        found = list(_invocations_in_text(text, where))
    return list(dict.fromkeys(found))


def _command_lines(path: Path, program: str, subcommand: str) -> list[Invocation]:
    """Invocations that are real command lines (they pass options), not prose mentions."""
    return [
        inv
        for inv in invocations(path)
        if inv.program == program and inv.subcommand == subcommand and inv.flags
    ]


# --------------------------------------------------------------------------------------------
# The extraction itself (so that the checks below cannot pass by finding nothing)
# --------------------------------------------------------------------------------------------


def test_extraction_handles_continuations_lists_and_embedded_scripts():
    text = "srun dask worker --scheduler-file s.json \\\n  --nthreads 2 && daskgauss info x.zarr"
    found = list(_invocations_in_text(text, "t"))
    assert [(i.program, i.subcommand, i.flags) for i in found] == [
        ("dask", "worker", ["--scheduler-file", "--nthreads"]),
        ("daskgauss", "info", []),
    ]
    document = {
        "args": ["daskgauss", "render", "c.npy", "s.zarr", "--shape", "8", "--lower", "-1"],
        "command": ["sh", "-c", "test -f c || daskgauss demo-centres c --count 5 ; echo"],
    }
    found = list(_invocations_in_yaml(document, "t"))
    flags = {(i.subcommand, tuple(i.flags)) for i in found}
    assert ("render", ("--shape", "--lower")) in flags  # -1 is a value, not a flag
    assert ("demo-centres", ("--count",)) in flags
    render = next(i for i in found if i.subcommand == "render")
    assert render.positionals == ["c.npy", "s.zarr"]
    assert render.value("--shape") == "8"


@pytest.mark.parametrize(
    ("path", "program", "subcommand"),
    [
        (COMPOSE, "daskgauss", "render"),
        (COMPOSE, "daskgauss", "demo-centres"),
        (COMPOSE, "dask", "worker"),
        (COMPOSE, "dask", "scheduler"),
        (DASKJOB, "daskgauss", "render"),
        (DASKJOB, "dask", "worker"),
        (SBATCH, "daskgauss", "render"),
        (SBATCH, "dask", "scheduler"),
        (SBATCH, "dask", "worker"),
        (README, "daskgauss", "render"),
        (README, "dask", "worker"),
        (JOBQUEUE, "dask", "worker"),
        (DOCKERFILE, "daskgauss", "render"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_recipe_contains_command(path, program, subcommand):
    assert _command_lines(path, program, subcommand), (
        f"no `{program} {subcommand} --...` command line found in {_rel(path)}"
    )


# --------------------------------------------------------------------------------------------
# 1. YAML structure
# --------------------------------------------------------------------------------------------


def test_deploy_has_the_recipes():
    for path in (DOCKERFILE, COMPOSE, DASKJOB, PVC, SBATCH, JOBQUEUE, README):
        assert path.is_file(), f"missing {_rel(path)}"
    assert len(YAML_FILES) >= 3


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents, f"{_rel(path)} is empty"
    for document in documents:
        assert isinstance(document, dict), f"{_rel(path)}: a document is not a mapping"
        if "apiVersion" in document or "kind" in document:  # a Kubernetes object
            assert {"apiVersion", "kind", "metadata"} <= document.keys()
            assert document["metadata"].get("name")


def _kubernetes_objects(kind: str) -> list[tuple[Path, dict]]:
    found = []
    for path in YAML_FILES:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:  # reported by test_yaml_parses
            continue
        for document in documents:
            if isinstance(document, dict) and document.get("kind") == kind:
                found.append((path, document))
    return found


def _env_names(container: dict) -> set[str]:
    return {item["name"] for item in container.get("env", [])}


def _pvc_names() -> set[str]:
    return {doc["metadata"]["name"] for _, doc in _kubernetes_objects("PersistentVolumeClaim")}


def test_compose_structure():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "render"} <= services.keys()
    ports = {str(p) for p in services["scheduler"]["ports"]}
    assert {"8786:8786", "8787:8787"} <= ports

    # One named volume, mounted at the same path in every service.
    mounts = {name: set(service.get("volumes", [])) for name, service in services.items()}
    shared = set.intersection(*(mounts[s] for s in ("scheduler", "worker", "render")))
    assert shared, f"no volume mounted the same way in scheduler, worker and render: {mounts}"
    for mount in shared:
        volume = mount.split(":")[0]
        assert volume in compose.get("volumes", {}), f"{volume} is not a named volume"

    worker = services["worker"]
    assert set(THREAD_PINS) <= set(worker["environment"])
    assert all(str(worker["environment"][k]) == "1" for k in THREAD_PINS)
    assert worker.get("deploy", {}).get("replicas", 1) >= 1

    render = services["render"]
    assert render.get("restart", "no") == "no", "render is a one-shot job"
    assert "scheduler" in render.get("depends_on", {})

    (render_line,) = [i for i in _command_lines(COMPOSE, "daskgauss", "render") if i.words]
    address = render_line.value("--scheduler")
    assert address == "tcp://scheduler:8786", address
    store = render_line.positionals[1]
    assert any(
        store.split(":-")[-1].startswith(m.split(":")[1].rstrip("/") + "/") for m in shared
    ), f"the store {store} is not on the volume shared with the workers ({shared})"
    assert _command_lines(COMPOSE, "daskgauss", "demo-centres"), "render makes demo centres first"


@pytest.mark.parametrize(
    ("path", "job"),
    [pytest.param(path, job, id=_rel(path)) for path, job in _kubernetes_objects("DaskJob")],
)
def test_daskjob_structure(path, job):
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    spec = job["spec"]
    assert {"job", "cluster"} <= spec.keys()
    job_pod = spec["job"]["spec"]
    cluster = spec["cluster"]["spec"]
    worker_pod = cluster["worker"]["spec"]
    scheduler = cluster["scheduler"]
    assert cluster["worker"]["replicas"] >= 1
    assert scheduler["spec"]["containers"]

    (runner,) = [c for c in job_pod["containers"] if "render" in c.get("args", [])]
    (worker,) = worker_pod["containers"]
    for container in (runner, worker):
        assert set(THREAD_PINS) <= _env_names(container), container["name"]

    args = [str(a) for a in runner["args"]]
    assert args[:2] == ["daskgauss", "render"], args
    assert args[args.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"

    worker_args = [str(a) for a in worker["args"]]
    assert worker_args[:2] == ["dask", "worker"], worker_args
    assert worker_args[worker_args.index("--name") + 1] == "$(DASK_WORKER_NAME)"
    assert worker_args[worker_args.index("--preload") + 1] == PRELOAD

    # The scheduler Service selects the cluster the operator names after the job, and
    # exposes the port names the operator talks to.
    service = scheduler["service"]
    assert service["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]
    assert service["selector"]["dask.org/component"] == "scheduler"
    assert {p["name"] for p in service["ports"]} >= {"tcp-comm", "http-dashboard"}

    # The worker's memory limit for the container is at least dask's --memory-limit.
    limit = worker["resources"]["limits"]["memory"]
    dask_limit = worker_args[worker_args.index("--memory-limit") + 1]
    assert _bytes(limit) >= _bytes(dask_limit), (limit, dask_limit)

    # Every worker reaches the store: an object-store URL, or a path on a PVC that the
    # runner and every worker mount at the same place.
    store = args[3]  # daskgauss render CENTRES STORE ...
    if re.match(r"^[a-z0-9]+://", store) and not store.startswith("file://"):
        return  # an object store: every pod reaches it over the network
    pvc_mounts = []
    for pod, container in ((job_pod, runner), (worker_pod, worker)):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        mounts = {
            (claims[m["name"]], m["mountPath"].rstrip("/"))
            for m in container.get("volumeMounts", [])
            if m["name"] in claims and store.startswith(m["mountPath"].rstrip("/") + "/")
        }
        assert mounts, f"{_rel(path)}: store {store} is not on a PVC in {container['name']}"
        pvc_mounts.append(mounts)
    assert pvc_mounts[0] & pvc_mounts[1], "runner and workers must mount the same claim"
    for claim, _ in pvc_mounts[0]:
        assert claim in _pvc_names(), f"claim {claim} has no PersistentVolumeClaim manifest"


def _bytes(quantity: str) -> float:
    """Kubernetes quantities (6Gi, 6G) and dask sizes (6GB, 6GiB) in bytes."""
    match = re.fullmatch(r"([\d.]+)\s*([KMGT]?)(i?)B?", str(quantity))
    assert match, quantity
    number, prefix, binary = match.groups()
    base = 1024 if binary else 1000
    return float(number) * base ** " KMGT".index(prefix or " ")


def test_pvc_structure():
    claims = [doc for path, doc in _kubernetes_objects("PersistentVolumeClaim") if path == PVC]
    assert len(claims) == 1
    (claim,) = claims
    assert claim["apiVersion"] == "v1"
    # Workers on different nodes write to the store at the same time.
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert claim["spec"]["resources"]["requests"]["storage"]


# --------------------------------------------------------------------------------------------
# 2. and 3. Every option used exists
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_rel)
def test_daskgauss_options_exist(path):
    found = [inv for inv in invocations(path) if inv.program == "daskgauss"]
    if not found:
        return  # nothing to check in this file
    cli = daskgauss_cli()
    problems = []
    for inv in found:
        if inv.subcommand not in cli:
            if inv.flags:  # a command line, not prose that happens to say "daskgauss on ..."
                problems.append(f"unknown subcommand in: {inv}")
            continue
        unknown = [flag for flag in inv.flags if flag not in cli[inv.subcommand]]
        if unknown:
            problems.append(f"{unknown} not in `daskgauss {inv.subcommand} --help`: {inv}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_rel)
def test_dask_options_exist(path):
    found = [inv for inv in invocations(path) if inv.program == "dask"]
    if not found:
        return  # nothing to check in this file
    cli = dask_cli()
    problems = [
        f"{[f for f in inv.flags if f not in cli[inv.subcommand]]} not in "
        f"`dask {inv.subcommand} --help`: {inv}"
        for inv in found
        if any(flag not in cli[inv.subcommand] for flag in inv.flags)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_rel)
def test_workers_preload_daskgauss(path):
    workers = _command_lines(path, "dask", "worker")
    if not workers:
        return  # nothing to check in this file
    for inv in workers:
        assert inv.value("--preload") == PRELOAD, f"worker without --preload {PRELOAD}: {inv}"


def test_preload_module_exists():
    assert importlib.util.find_spec(PRELOAD) is not None, (
        f"the recipes start workers with --preload {PRELOAD}, which does not exist"
    )


def test_sbatch_script():
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash")
    assert re.search(r"^#SBATCH --time=", text, re.MULTILINE)
    for pin in THREAD_PINS:
        assert re.search(rf"\b{pin}=1\b", text), pin

    # Scheduler, workers and render all use the same scheduler file.
    (scheduler,) = _command_lines(SBATCH, "dask", "scheduler")
    workers = _command_lines(SBATCH, "dask", "worker")
    renders = _command_lines(SBATCH, "daskgauss", "render")
    files = {inv.value("--scheduler-file") for inv in [scheduler, *workers, *renders]}
    assert None not in files, "scheduler, workers and render all take --scheduler-file"
    assert len(files) == 1, files
    assert re.search(r"\bsrun\b[^\n]*\\\n\s*dask worker", text), "workers must start under srun"
    for worker in workers:
        assert worker.value("--local-directory"), "worker spill directory: node-local scratch"
        assert worker.value("--nthreads")
        assert worker.value("--memory-limit")


# --------------------------------------------------------------------------------------------
# 4. The dask-jobqueue example
# --------------------------------------------------------------------------------------------


def test_jobqueue_example_compiles(tmp_path):
    py_compile.compile(str(JOBQUEUE), cfile=str(tmp_path / "example.pyc"), doraise=True)


def test_jobqueue_example_imports_without_dask_jobqueue(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import would raise
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in deploy/
    spec = importlib.util.spec_from_file_location("daskgauss_jobqueue_example", JOBQUEUE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == name)
            or (isinstance(node.func, ast.Name) and node.func.id == name)
        )
    ]


def _module_constant(tree: ast.Module, name: str) -> object:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no module-level constant {name}")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_jobqueue_example_cluster_settings():
    tree = ast.parse(JOBQUEUE.read_text())
    (cluster,) = _calls(tree, "SLURMCluster")
    given = {k.arg for k in cluster.keywords}
    assert {"cores", "memory", "processes", "walltime"} <= given
    assert {"job_script_prologue", "worker_extra_args"} <= given

    extra = ast.literal_eval(_keyword(cluster, "worker_extra_args"))
    assert extra[extra.index("--preload") + 1] == PRELOAD

    prologue = _keyword(cluster, "job_script_prologue")
    lines = (
        _module_constant(tree, prologue.id)
        if isinstance(prologue, ast.Name)
        else ast.literal_eval(prologue)
    )
    for pin in THREAD_PINS:
        assert f"export {pin}=1" in lines, pin

    assert _calls(tree, "scale"), "the example scales the cluster"
    assert _calls(tree, "Client"), "the example connects a Client to the cluster"


def test_jobqueue_example_matches_dask_jobqueue():
    import dask_jobqueue  # in the test extra: missing fails, it is not skipped
    from dask_jobqueue.slurm import SLURMJob

    accepted = set()
    for cls in SLURMJob.__mro__:
        if "__init__" in vars(cls):
            accepted |= set(inspect.signature(cls.__init__).parameters)
    accepted |= set(inspect.signature(dask_jobqueue.SLURMCluster.__init__).parameters)
    tree = ast.parse(JOBQUEUE.read_text())
    (cluster,) = _calls(tree, "SLURMCluster")
    unknown = {k.arg for k in cluster.keywords} - accepted
    assert not unknown, f"SLURMCluster does not take {unknown}"


def test_jobqueue_example_uses_the_python_api():
    import daskgauss

    tree = ast.parse(JOBQUEUE.read_text())
    checks = [("render_to_zarr", "daskgauss.render_to_zarr"), ("from_bounds", "Grid.from_bounds")]
    for name, label in checks:
        function = getattr(daskgauss, name, None) or getattr(daskgauss.Grid, name, None)
        assert function is not None, f"the example calls {label}, which daskgauss lacks"
        parameters = inspect.signature(function).parameters
        positional = [
            p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        calls = _calls(tree, name)
        assert calls, f"the example does not call {label}"
        for call in calls:
            unknown = {k.arg for k in call.keywords} - set(parameters)
            assert not unknown, f"{label} has no parameter {unknown}"
            assert len(call.args) <= len(positional), f"too many positional arguments to {label}"
    (render,) = _calls(tree, "render_to_zarr")
    assert {"chunks", "progress"} <= {k.arg for k in render.keywords}


# --------------------------------------------------------------------------------------------
# 5. The Dockerfile
# --------------------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuations joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_project_and_pins_threads():
    instructions = _instructions(DOCKERFILE.read_text())
    (base,) = [args for name, args in instructions if name == "FROM"]
    assert re.match(r"python:3\.1[1-9]", base), base

    copies = [args.split() for name, args in instructions if name == "COPY"]
    sources = [(c[-2], c[-1].rstrip("/")) for c in copies]
    assert (".", "/src") in sources, "the build context (repo root) is copied to /src"

    pip = [args for name, args in instructions if name == "RUN" and "pip install" in args]
    assert any(re.search(r"""["']?/src(\[[\w,\-${}]+\])?["']?(\s|$)""", a) for a in pip), pip
    assert not any(re.search(r"pip install[^&|;]*\s-e\s", a) for a in pip), "no editable install"

    env: dict[str, str] = {}
    for name, args in instructions:
        if name == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    for pin in THREAD_PINS:
        assert env.get(pin) == "1", f"ENV {pin}=1 missing"

    users = [args for name, args in instructions if name == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, users[-1]

    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    assert ignore.is_file(), "without it the build context drags in .venv and .git"
    ignored = set(ignore.read_text().split())
    assert {".git", ".venv"} <= ignored
