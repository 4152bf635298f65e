"""Static checks of the deployment files under infra/ (see infra/README.md).

Nothing under infra/ can be applied here (no Docker engine, no Kubernetes cluster, no
cloud account), so these tests check what can be checked without one: every YAML file
parses; the Ray manifests have what KubeRay and Rewarm need (a 0-CPU head with the
trial-slot resource, a fixed GPU worker pool, shared storage in every pod); the RayJob's
entrypoint and the README's `rewarm` commands pass Rewarm's own argument parser and spec
validation; image and Ray versions agree with pyproject.toml; no credential is written
anywhere; dashboards and published ports stay on 127.0.0.1; the MLflow server runs with
basic-auth, a Postgres backend and an S3 artifact store.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
TEXT_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file())
DOCKERFILE = INFRA / "docker" / "Dockerfile"
COMPOSE = INFRA / "mlflow" / "docker-compose.yaml"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
README = INFRA / "README.md"
LOOPBACK = "127.0.0.1"
SUBCOMMANDS_WITH_SPEC = {"validate", "train", "sweep"}
# Names of variables/keys that hold a credential (AWS_ACCESS_KEY_ID included: treat it as one).
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES for d in _docs(p)]


def _k8s(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _all_docs() if isinstance(d, dict) and d.get("kind") == kind]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _version_tuple(text: str, width: int = 3) -> tuple[int, ...]:
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (width - len(parts)))


def _ray_minimum() -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray\[[^\]]*\]\s*>=\s*([\d.]+)(\s*,\s*<\s*[\d.]+)?", dep.strip())
        if m:
            return m.group(1)
    raise AssertionError("pyproject.toml has no ray[...]>=X dependency")


def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _image_workdir() -> PurePosixPath:
    workdirs = [ln.split(None, 1)[1] for ln in _dockerfile_lines() if ln.upper().startswith("WORKDIR ")]
    assert workdirs, "infra/docker/Dockerfile sets no WORKDIR"
    return PurePosixPath(workdirs[-1])


def _repo_path_of(path_in_command: str) -> Path:
    """A spec path as a job on the image sees it (absolute under the image's WORKDIR) or as
    written relative to a checkout, mapped to the file in this repository."""
    p = PurePosixPath(path_in_command)
    if p.is_absolute():
        workdir = _image_workdir()
        assert p.is_relative_to(workdir), f"{p} is not under the image's WORKDIR {workdir}"
        p = p.relative_to(workdir)
    return REPO / p


def _cpu(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _parse_rewarm(argv: list[str]):
    from sweeps.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on a bad command line
        raise AssertionError(f"`rewarm {shlex.join(argv)}` does not parse (exit {exc.code})") from None


# ---------------------------------------------------------------------- Ray clusters


def _ray_clusters() -> list[tuple[str, dict, dict | None, Path]]:
    """(label, RayCluster spec, the RayJob owning it or None, file) for every Ray cluster."""
    out = []
    for path, doc in _k8s("RayCluster"):
        out.append((f"RayCluster/{doc['metadata']['name']}", doc["spec"], None, path))
    for path, doc in _k8s("RayJob"):
        assert "rayClusterSpec" in doc["spec"] or "clusterSelector" in doc["spec"], \
            f"RayJob {doc['metadata']['name']} has neither rayClusterSpec nor clusterSelector"
        if "rayClusterSpec" in doc["spec"]:
            out.append((f"RayJob/{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"], doc, path))
    return out


CLUSTERS = _ray_clusters()
CLUSTER_IDS = [c[0] for c in CLUSTERS]


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts_of_claims(group: dict, container: dict) -> dict[str, str]:
    """mountPath -> PVC name, for the container's volumes backed by a PersistentVolumeClaim."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in group["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in claims}


def _rwx_claims() -> set[str]:
    return {d["metadata"]["name"] for _, d in _k8s("PersistentVolumeClaim")
            if "ReadWriteMany" in d["spec"].get("accessModes", [])}


def _trial_slots(start_params: dict) -> int:
    raw = start_params.get("resources")
    assert raw, "head rayStartParams has no resources (rewarm_trial_slot)"
    # KubeRay's format: the JSON object in double quotes, inner quotes escaped
    text = raw.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return int(json.loads(text).get("rewarm_trial_slot", 0))


def _worker_pool(spec: dict) -> dict[str, float]:
    """CPUs and GPUs the fixed worker pool gives Ray (minReplicas x container limits)."""
    cpu = gpu = 0.0
    for group in spec["workerGroupSpecs"]:
        for c in _containers(group):
            limits = c.get("resources", {}).get("limits", {})
            n = group.get("minReplicas", group.get("replicas", 0))
            cpu += n * _cpu(limits.get("cpu", 0))
            gpu += n * float(limits.get("nvidia.com/gpu", 0))
    return {"CPU": cpu, "GPU": gpu}


def _rayjob_command(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["rewarm", "sweep"], f"entrypoint is not `rewarm sweep ...`: {argv[:3]}"
    return _parse_rewarm(argv[1:])


def _overrides(args) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.overrides)


def test_infra_holds_the_documented_files():
    """Guard against the parametrized tests passing on an empty glob."""
    for rel in ["docker/Dockerfile", "docker/Dockerfile.dockerignore", "kuberay/raycluster.yaml",
                "kuberay/rayjob.yaml", "kuberay/mlflow.yaml", "kuberay/storage.yaml",
                "cluster-launcher/aws.yaml", "mlflow/docker-compose.yaml", "mlflow/Dockerfile",
                "mlflow/basic_auth.ini", "mlflow/env.example", "README.md"]:
        assert (INFRA / rel).is_file(), f"infra/{rel} is missing"
    assert len(YAML_FILES) >= 6
    assert {"RayCluster/rewarm", "RayJob/rewarm-demo-sweep"} <= set(CLUSTER_IDS)


@pytest.mark.parametrize("path", YAML_FILES, ids=[_rel(p) for p in YAML_FILES])
def test_yaml_parses_and_k8s_objects_are_complete(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: a document is not a mapping"
        if "apiVersion" in doc:  # a Kubernetes object
            assert doc.get("kind") and doc.get("metadata", {}).get("name"), f"{_rel(path)}: kind/name missing"
            # one namespace, which the in-cluster DNS names (mlflow.rewarm.svc...) rely on
            assert doc["metadata"].get("namespace") == "rewarm", \
                f"{_rel(path)}: {doc['kind']}/{doc['metadata']['name']} is not in namespace rewarm"


@pytest.mark.parametrize("label,spec,job,path", CLUSTERS, ids=CLUSTER_IDS)
def test_ray_cluster_shape(label, spec, job, path):
    assert spec["rayVersion"] == _dockerfile_ray_version(), f"{label}: rayVersion != the image's Ray"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{label}: Ray token authentication is off"
    head = spec["headGroupSpec"]
    assert _containers(head), f"{label}: head has no container"
    # trials must not land on the head: 0 CPUs, trial drivers use the custom resource
    assert str(head["rayStartParams"].get("num-cpus")) == "0", f"{label}: head must advertise num-cpus 0"
    assert _trial_slots(head["rayStartParams"]) >= 1
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{label}: head Service must stay ClusterIP"
    assert spec["workerGroupSpecs"], f"{label}: no worker group"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(float(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                         for c in _containers(g))]
    assert gpu_groups, f"{label}: no worker group with an nvidia.com/gpu limit"
    for g in spec["workerGroupSpecs"]:
        # Rewarm checks at start that a trial fits the cluster: the pool must exist then
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] >= 1, \
            f"{label}/{g['groupName']}: worker pool must be fixed (replicas = minReplicas = maxReplicas)"
    assert spec.get("enableInTreeAutoscaling") in (None, False)


@pytest.mark.parametrize("label,spec,job,path", CLUSTERS, ids=CLUSTER_IDS)
def test_shared_storage_and_cluster_env_in_every_pod(label, spec, job, path):
    """Driver (head) and Train workers must see the same files at the same path."""
    train_env = _ray_train_env_defaults()
    assert train_env, "sweeps/settings.py sets no RAY_TRAIN_* default (test out of date?)"
    rwx = _rwx_claims()
    for group in _groups(spec):
        for c in _containers(group):
            where = f"{label}/{c['name']}"
            mounts = _mounts_of_claims(group, c)
            shared = [m for m, claim in mounts.items() if claim in rwx]
            assert shared, f"{where}: no ReadWriteMany volume mounted (storage.yaml)"
            env = _env(c)
            cache = env.get("REWARM_CACHE_DIR", {}).get("value", "")
            assert any(PurePosixPath(cache).is_relative_to(m) for m in shared), \
                f"{where}: REWARM_CACHE_DIR={cache!r} is not on the shared volume"
            for name, value in train_env.items():
                assert env.get(name, {}).get("value") == value, f"{where}: {name} must be {value!r}"


@pytest.mark.parametrize("label,spec,job,path", CLUSTERS, ids=CLUSTER_IDS)
def test_dashboard_is_loopback_or_closed(label, spec, job, path):
    host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host")
    if job is None:
        assert host == LOOPBACK, f"{label}: dashboard-host must be 127.0.0.1 (reach it by port-forward)"
        return
    if host == LOOPBACK:
        return
    # A RayJob's dashboard must be reachable by the KubeRay operator: then only on the pod
    # network, with a NetworkPolicy in the same file admitting the operator on 8265 only.
    assert host == "0.0.0.0", f"{label}: unexpected dashboard-host {host!r}"
    labels = spec["headGroupSpec"]["template"]["metadata"]["labels"]
    policies = [d for d in _docs(path) if d.get("kind") == "NetworkPolicy"
                and d["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
    assert policies, f"{label}: dashboard on 0.0.0.0 but no NetworkPolicy selects its head pod"
    for pol in policies:
        for rule in pol["spec"]["ingress"]:
            for peer in rule["from"]:
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    ports = {p["port"] for p in rule.get("ports", [])}
                    assert ports == {8265}, f"{pol['metadata']['name']}: outside peers may only reach 8265"
                else:
                    assert peer["podSelector"]["matchLabels"].items() <= labels.items(), \
                        f"{pol['metadata']['name']}: admits pods outside this cluster"


def test_rayjob_entrypoint_is_a_valid_sweep_that_fits_its_cluster():
    from sweeps.config.loading import load_spec
    from sweeps.execution.preflight import check_cluster_fits

    jobs = _k8s("RayJob")
    assert jobs
    for path, job in jobs:
        assert job["spec"].get("shutdownAfterJobFinishes") is True
        args = _rayjob_command(job)
        spec_file = _repo_path_of(args.spec)
        assert spec_file.is_file(), f"{_rel(path)}: entrypoint names {args.spec}, not a file of the repo"
        spec = load_spec(spec_file, args.overrides)  # raises SpecError on any bad override
        cluster = job["spec"]["rayClusterSpec"]
        check_cluster_fits(spec, _worker_pool(cluster))  # raises SpecError: a trial would not fit
        head = cluster["headGroupSpec"]
        assert _trial_slots(head["rayStartParams"]) >= spec.budget.max_concurrent
        # storage_path on the shared volume, in every pod
        storage = PurePosixPath(_overrides(args).get("storage_path", spec.storage_path))
        assert storage.is_absolute(), "storage_path must be an absolute path on the shared volume"
        for group in _groups(cluster):
            for c in _containers(group):
                mounts = [m for m, claim in _mounts_of_claims(group, c).items() if claim in _rwx_claims()]
                assert any(storage.is_relative_to(m) for m in mounts), \
                    f"{c['name']}: storage_path {storage} is not under a shared mount"


def test_the_jobs_sweep_also_fits_the_other_clusters():
    """raycluster.yaml and aws.yaml are meant for the same sweeps as the RayJob."""
    from sweeps.config.loading import load_spec
    from sweeps.execution.preflight import check_cluster_fits

    (_, job), = _k8s("RayJob")
    args = _rayjob_command(job)
    spec = load_spec(_repo_path_of(args.spec), args.overrides)
    for label, cluster, owner, _ in CLUSTERS:
        if owner is None:
            check_cluster_fits(spec, _worker_pool(cluster))
    launcher = _docs(LAUNCHER)[0]
    pool = {"CPU": 0.0, "GPU": 0.0}
    for name, nt in launcher["available_node_types"].items():
        if name != launcher["head_node_type"]:
            for k in pool:
                pool[k] += nt["min_workers"] * nt["resources"].get(k, 0)
    check_cluster_fits(spec, pool)


def test_no_public_exposure_in_k8s():
    assert not _k8s("Ingress"), "no Ingress: dashboards and MLflow are reached by port-forward"
    for path, svc in _k8s("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", \
            f"{_rel(path)}: Service {svc['metadata']['name']} is {svc['spec']['type']}"


# ---------------------------------------------------------------------- images and versions


def _dockerfile_ray_version() -> str:
    froms = [ln.split()[1] for ln in _dockerfile_lines() if ln.upper().startswith("FROM ")]
    assert froms, "infra/docker/Dockerfile has no FROM"
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-(gpu|cu\d+)", froms[-1])
    assert m, f"base image {froms[-1]!r} is not a rayproject/ray GPU image"
    return m.group(1)


def test_dockerfile_ray_matches_pyproject_minimum():
    assert _version_tuple(_dockerfile_ray_version()) == _version_tuple(_ray_minimum()), \
        f"Dockerfile Ray {_dockerfile_ray_version()} != pyproject's minimum {_ray_minimum()}"


def test_dockerfile_keeps_the_images_torch():
    lines = _dockerfile_lines()
    project_installs = [ln for ln in lines if re.search(r"pip install\b.*\s\.(\s|$)", ln)]
    assert project_installs and all("--no-deps" in ln for ln in project_installs), \
        "the project must be installed with --no-deps (its loose torch pin would replace the CUDA torch)"
    dep_installs = [ln for ln in lines if "pip install" in ln and "-r " in ln]
    assert dep_installs and all(re.search(r"\s(-c|--constraint)\s", ln) for ln in dep_installs), \
        "dependencies must be installed under a constraints file"
    freeze = next((ln for ln in lines if "constraints" in ln and "grep" in ln), "")
    assert "torch" in freeze and "ray" in freeze, "the constraints must pin torch and ray"
    assert any(re.fullmatch(r"COPY\b.*\s\.\s+\.", ln) for ln in lines), "the image must hold the repository"


def test_dockerignore_keeps_local_state_out():
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    patterns = {ln.strip().strip("/") for ln in ignore.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    for needed in (".venv", "mlflow.db", "rewarm_runs", "mlartifacts", "mlruns", "**/.env"):
        assert needed in patterns, f"{_rel(ignore)} does not exclude {needed}"
    # the specs that job entrypoints name must reach the image
    assert not {"sweeps", "sweeps/specs", "*.yaml"} & patterns


def _launcher_images(launcher: dict) -> set[str]:
    docker = launcher.get("docker", {})
    images = {docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for nt in launcher.get("available_node_types", {}).values():
        images |= {nt.get("docker", {}).get(k) for k in ("image", "worker_image") if nt.get("docker", {}).get(k)}
    return images


def test_every_ray_node_runs_the_project_image():
    images = set()
    for label, spec, _, _ in CLUSTERS:
        for group in _groups(spec):
            images |= {c["image"] for c in _containers(group)}
            images |= {c["image"] for c in group["template"]["spec"].get("initContainers", [])}
    launcher_images = _launcher_images(_docs(LAUNCHER)[0])
    assert launcher_images, "aws.yaml names no docker image"
    images |= launcher_images
    assert len(images) == 1, f"Ray nodes run different images: {sorted(images)}"
    image = images.pop()
    version = _pyproject()["project"]["version"]
    assert re.fullmatch(rf"([a-z0-9.-]+(:\d+)?/)?([a-z0-9._-]+/)*rewarm:{re.escape(version)}", image), \
        f"{image!r} is not the project image rewarm:{version}"


# ---------------------------------------------------------------------- credentials

# a value that is not a credential: empty, or taken from elsewhere at run time
_INDIRECT = re.compile(r"""^(?:|["']?\$[{(]?[A-Za-z_].*|<[^>]*>)$""")
_ASSIGNMENT = re.compile(
    r"(?<![\w.-])([\w.-]*(?:password|passwd|secret|token|access_key)[\w.-]*)\s*[:=]\s*(\S*)", re.IGNORECASE)
_KEY_PATTERNS = [re.compile(p) for p in (
    r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"ghp_[A-Za-z0-9]{36}", r"hf_[A-Za-z0-9]{30,}", r"sk-[A-Za-z0-9]{32,}")]
_URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@")


@pytest.mark.parametrize("path", TEXT_FILES, ids=[_rel(p) for p in TEXT_FILES])
def test_no_literal_credentials(path):
    text = path.read_text()
    for pattern in _KEY_PATTERNS:
        assert not pattern.search(text), f"{_rel(path)}: looks like a real key ({pattern.pattern})"
    for m in _URI_WITH_PASSWORD.finditer(text):
        assert _INDIRECT.match(m.group(1)), f"{_rel(path)}: a URI with a literal password"
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _ASSIGNMENT.finditer(line):
            key, value = m.group(1), m.group(2).rstrip(",;")
            if key.lower() in ("secretkeyref", "secretref", "secretname") or key.lower().endswith(("_path", "_file")):
                continue  # a reference to where the credential is, not the credential
            assert _INDIRECT.match(value), f"{_rel(path)}:{lineno}: {key} has a literal value {value!r}"


def _walk(node, where=""):
    if isinstance(node, dict):
        yield where, node
        for k, v in node.items():
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}[{i}]")


def test_k8s_credentials_come_from_secrets():
    checked = 0
    for path, doc in _all_docs():
        if "apiVersion" not in doc:
            continue
        for where, node in _walk(doc):
            if "name" in node and ("value" in node or "valueFrom" in node) and SECRET_NAME.search(str(node["name"])):
                checked += 1
                assert "value" not in node and "secretKeyRef" in node.get("valueFrom", {}), \
                    f"{_rel(path)}{where}: {node['name']} must come from a secretKeyRef"
        if doc.get("kind") in ("Secret", "ConfigMap"):
            data = {**doc.get("data", {}), **doc.get("stringData", {})}
            assert doc["kind"] != "Secret", f"{_rel(path)}: a Secret object in a manifest holds its values"
            assert not any(SECRET_NAME.search(k) for k in data), f"{_rel(path)}: credential in a ConfigMap"
    assert checked >= 10, "expected the manifests' credentials (MLflow, S3, Postgres) to be checked"


def test_compose_credentials_are_required_interpolations():
    compose = _docs(COMPOSE)[0]
    checked = 0
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                checked += 1
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), \
                    f"compose {name}.{key} must be ${{VAR:?message}} from the env file, not {value!r}"
    assert checked >= 6


def test_env_examples_hold_no_values_for_credentials():
    examples = sorted(INFRA.rglob("*.example"))
    assert len(examples) >= 3
    for path in examples:
        for line in path.read_text().splitlines():
            if line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            if SECRET_NAME.search(key) and key.strip() != "RAY_AUTH_MODE":
                assert value.strip() == "", f"{_rel(path)}: {key} must be left empty in the example"
    # and the files users fill in from them are git-ignored
    ignored = (INFRA / ".gitignore").read_text().split()
    assert ".env" in ignored and "*.env" in ignored


# ---------------------------------------------------------------------- bindings and ports


def _published_host_ip(port) -> str:
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    text = str(port)
    if text.startswith("${"):  # ${VAR:-default}:host:container
        var, rest = text[2:].split("}", 1)
        assert ":-" in var and rest.count(":") == 2, f"published port {text!r} needs a default host address"
        return var.split(":-", 1)[1]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else ""


def test_compose_publishes_on_loopback_only():
    compose = _docs(COMPOSE)[0]
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            assert _published_host_ip(port) == LOOPBACK, f"compose {name}: port {port!r} is not bound to 127.0.0.1"
            target = str(port["target"] if isinstance(port, dict) else port).rsplit(":", 1)[-1]
            assert target not in ("5432", "9000"), f"compose {name}: Postgres / the S3 API must not be published"
    assert published >= 1


def _ray_start_commands(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"ray start\b[^\n'\"]*(?:'[^']*'[^\n'\"]*)*", text)]


def test_launcher_commands_are_strings():
    """A plain YAML scalar with '": ' in it (JSON in a shell command) parses as a mapping."""
    launcher = _docs(LAUNCHER)[0]
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in launcher.get(key, []):
            assert isinstance(cmd, str), f"aws.yaml {key}: {cmd!r} is not a shell command string"
    for name, service in _docs(COMPOSE)[0]["services"].items():
        for key in ("command", "entrypoint"):
            value = service.get(key, [])
            assert isinstance(value, str) or all(isinstance(a, str) for a in value), f"compose {name}.{key}"


def test_launcher_keeps_trials_off_the_head_and_the_dashboard_local():
    launcher = _docs(LAUNCHER)[0]
    head_type = launcher["available_node_types"][launcher["head_node_type"]]
    assert head_type["resources"]["CPU"] == 0
    slots = head_type["resources"]["rewarm_trial_slot"]
    assert slots >= 1
    heads = [c for c in launcher["head_start_ray_commands"] if "ray start" in c]
    assert heads
    for cmd in heads:
        argv = shlex.split(cmd.split("ray start", 1)[1])
        assert "--head" in argv and f"--dashboard-host={LOOPBACK}" in argv and "--num-cpus=0" in argv, cmd
        resources = next(a for a in argv if a.startswith("--resources="))
        assert json.loads(resources.split("=", 1)[1]) == {"rewarm_trial_slot": slots}
    for cmd in launcher["worker_start_ray_commands"]:
        assert "--head" not in cmd
    workers = [nt for n, nt in launcher["available_node_types"].items() if n != launcher["head_node_type"]]
    assert any(nt["resources"].get("GPU", 0) >= 1 for nt in workers)
    for nt in workers:
        assert nt["min_workers"] == nt["max_workers"] >= 1, "the GPU pool must be fixed"
    # shared storage and Ray Train settings reach the container
    opts = " ".join(launcher["docker"]["run_options"])
    mount = re.search(r"--volume=(\S+):(\S+)", opts)
    assert mount and mount.group(1) == mount.group(2), "a shared host mount at the same path in the container"
    cache = re.search(r"--env=REWARM_CACHE_DIR=(\S+)", opts)
    assert cache and PurePosixPath(cache.group(1)).is_relative_to(mount.group(2))
    for name, value in _ray_train_env_defaults().items():
        assert f"--env={name}={value}" in opts
    # credentials: from a file on the user's machine, sourced before ray start
    assert all(". ~/.rewarm/cluster.env" in c for c in launcher["head_start_ray_commands"] + launcher[
        "worker_start_ray_commands"] if "ray start" in c)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


@pytest.mark.parametrize("path", TEXT_FILES, ids=[_rel(p) for p in TEXT_FILES])
def test_every_ray_start_binds_the_dashboard_to_loopback(path):
    # YAML: the parsed strings (a command may be folded over lines); else: the text with
    # shell line continuations joined
    texts = list(_strings(_docs(path))) if path in YAML_FILES else [path.read_text().replace("\\\n", " ")]
    for cmd in (c for t in texts for c in _ray_start_commands(t)):
        if "--head" in cmd:
            assert f"--dashboard-host={LOOPBACK}" in cmd.replace(" --dashboard-host ", " --dashboard-host="), \
                f"{_rel(path)}: `{cmd}` does not bind the dashboard to 127.0.0.1"


def _ray_train_env_defaults() -> dict[str, str]:
    """The RAY_TRAIN_* settings of sweeps/settings.py. `rewarm` also sends them with its
    job's runtime_env; the manifests set them in every pod as well, so that Ray processes
    outside any sweep job (and older clients) run with them too."""
    from sweeps.settings import PROCESS_SETTINGS as RAY_ENV_DEFAULTS

    return {k: v for k, v in RAY_ENV_DEFAULTS.items() if k.startswith("RAY_TRAIN_")}


# ---------------------------------------------------------------------- MLflow


def _mlflow_argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _mlflow_servers() -> list[tuple[str, list[str], dict]]:
    """(where, argv, environment as {name: value-or-ref}) of every MLflow server definition."""
    out = []
    compose = _docs(COMPOSE)[0]
    svc = compose["services"]["mlflow"]
    out.append(("compose", _mlflow_argv(svc["command"]), dict(svc.get("environment", {}))))
    for path, dep in _k8s("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            argv = _mlflow_argv(c.get("command", []) + c.get("args", []))
            if argv[:2] == ["mlflow", "server"]:
                out.append((f"{_rel(path)}:{c['name']}", argv, _env(c)))
    return out


MLFLOW_SERVERS = _mlflow_servers()


@pytest.mark.parametrize("where,argv,env", MLFLOW_SERVERS, ids=[s[0] for s in MLFLOW_SERVERS])
def test_mlflow_server_auth_postgres_s3(where, argv, env):
    assert argv[:2] == ["mlflow", "server"]
    assert _option(argv, "--app-name") == "basic-auth", f"{where}: authentication is off"
    backend = _option(argv, "--backend-store-uri") or ""
    assert urlparse(backend).scheme.split("+")[0] == "postgresql", f"{where}: backend is not Postgres"
    assert urlparse(backend).password is None, f"{where}: the backend URI must not carry the password"
    assert "PGPASSWORD" in env, f"{where}: no PGPASSWORD for the passwordless backend URI"
    assert (_option(argv, "--artifacts-destination") or "").startswith("s3://"), f"{where}: artifacts not on S3"
    assert "--no-serve-artifacts" not in argv, f"{where}: clients hold no S3 keys, artifacts must be proxied"
    assert "MLFLOW_S3_ENDPOINT_URL" in env and "MLFLOW_AUTH_ADMIN_PASSWORD" in env
    driver = urlparse(backend).scheme.partition("+")[2]
    installed = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert {"psycopg": "psycopg[", "psycopg2": "psycopg2"}.get(driver, "?") in installed, \
        f"{where}: the image lacks the driver of {backend.split('@')[0]}"


def test_mlflow_image_matches_the_client():
    text = (INFRA / "mlflow" / "Dockerfile").read_text()
    m = re.search(r"ARG MLFLOW_VERSION=([\d.]+)", text)
    assert m and '"mlflow[auth]==${MLFLOW_VERSION}"' in text, "the image must pin mlflow[auth] (Flask-WTF)"
    minimum = next(re.search(r">=\s*([\d.]+)", d).group(1) for d in _pyproject()["project"]["dependencies"]
                   if d.startswith("mlflow"))
    assert _version_tuple(m.group(1)) >= _version_tuple(minimum)
    conf = re.search(r"ENV MLFLOW_AUTH_CONFIG_PATH=(\S+)", text)
    assert conf and re.search(rf"COPY basic_auth.ini {re.escape(conf.group(1))}", text)


def _mlflow_auth_module(name: str):
    """mlflow.server.auth.<name>, loaded from its file: importing it the normal way runs the
    package's __init__, which needs Flask-WTF (mlflow[auth], a server-only extra that the
    MLflow image has and the project's environment does not)."""
    import importlib.util

    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_rewarm_test_mlflow_auth_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_basic_auth_ini_loads_with_mlflows_reader(monkeypatch):
    ini = INFRA / "mlflow" / "basic_auth.ini"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    config = _mlflow_auth_module("config").read_auth_config()
    assert config.admin_password is None, "the admin password must come from MLFLOW_AUTH_ADMIN_PASSWORD"
    _mlflow_auth_module("permissions").get_permission(config.default_permission)  # KeyError if unknown
    uri = urlparse(config.database_uri)
    assert uri.scheme.startswith("postgresql") and uri.password is None
    # the database it names is the one the Postgres init script creates (compose and k8s alike)
    sql = (INFRA / "mlflow" / "initdb" / "10-auth-db.sql").read_text()
    assert re.search(rf"CREATE DATABASE {re.escape(uri.path.lstrip('/'))}\b", sql)
    (_, cm), = [(p, d) for p, d in _k8s("ConfigMap") if d["metadata"]["name"] == "postgres-initdb"]
    assert cm["data"]["10-auth-db.sql"] == sql, "kuberay/mlflow.yaml's init script differs from infra/mlflow/initdb"
    assert "postgres" == uri.hostname and any(d["metadata"]["name"] == "postgres" for _, d in _k8s("Service"))
    assert configparser.ConfigParser().read(ini)


def test_ray_pods_reach_the_in_cluster_mlflow():
    from mlflow.server.security_utils import is_allowed_host_header

    services = {(d["metadata"]["name"], d["metadata"]["namespace"]): d for _, d in _k8s("Service")}
    (where, argv, _), = [s for s in MLFLOW_SERVERS if s[0] != "compose"]
    allowed = (_option(argv, "--allowed-hosts") or "").split(",")
    uris = set()
    for label, spec, _, _ in CLUSTERS:
        head, = _containers(spec["headGroupSpec"])
        env = _env(head)
        uris.add(env["MLFLOW_TRACKING_URI"]["value"])
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{label}: {name}"
        for group in spec["workerGroupSpecs"]:  # only the driver talks to MLflow
            for c in _containers(group):
                assert not any(n.startswith("MLFLOW_TRACKING_") for n in _env(c)), f"{label}/{c['name']}"
    for uri in uris:
        u = urlparse(uri)
        name, namespace = u.hostname.split(".")[:2]
        svc = services.get((name, namespace))
        assert svc and u.port in {p["port"] for p in svc["spec"]["ports"]}, f"no Service behind {uri}"
        assert is_allowed_host_header(allowed, u.netloc), f"MLflow would refuse Host {u.netloc} (--allowed-hosts)"
    assert is_allowed_host_header(allowed, "localhost:5000"), "kubectl port-forward must still work"


# ---------------------------------------------------------------------- README


def _readme_commands() -> list[list[str]]:
    """Every `rewarm ...` / `python -m sweeps.cli ...` invocation in the README's code blocks."""
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", README.read_text(), re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for m in re.finditer(r"(?:^|\s--\s+|^[A-Z_]+=\S+\s+)(rewarm|python -m sweeps\.cli)\s+(.*)$", line):
                commands.append(shlex.split(m.group(2)))
    return commands


def test_readme_rewarm_commands_parse_and_their_specs_validate():
    from sweeps.config.loading import load_spec

    commands = _readme_commands()
    assert len(commands) >= 6, f"expected the README's rewarm commands, found {len(commands)}"
    seen = set()
    for argv in commands:
        args = _parse_rewarm(argv)
        seen.add(args.command)
        if args.command in SUBCOMMANDS_WITH_SPEC:
            spec_file = _repo_path_of(args.spec)
            assert spec_file.is_file(), f"README: {args.spec} is not a spec of the repo"
            load_spec(spec_file, args.overrides)
    assert {"sweep", "resume", "best"} <= seen


def test_readme_names_existing_files():
    for rel in set(re.findall(r"\binfra/[\w./-]+\w", README.read_text())):
        path = REPO / rel
        if path.suffix == ".env" or path.name == ".env":  # files the user makes from an example
            assert path.with_name(path.name + ".example").is_file() or path.with_name("env.example").is_file(), rel
        else:
            assert path.exists(), f"infra/README.md names {rel}, which does not exist"
