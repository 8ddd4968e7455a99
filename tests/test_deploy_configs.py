"""Cluster deployment files: cluster.yaml against Ray's own cluster-config schema, the KubeRay manifests in deploy/
against the fields KubeRay requires, and every embedded config against the loader that will read it. Fast, offline."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
IMAGE = "registry.example.com/causal2vec-platform:0.1.0"  # the placeholder every manifest uses (docs explain it)
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))
CODE_DIR = "/home/ray/causal2vec-platform"  # where the image holds this repository


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in _docs(path)]


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _all_docs() if doc["kind"] == kind]


def _ray_version() -> str:
    import ray

    return ray.__version__


# -- cluster.yaml ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_and_its_own_validation(cluster):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)  # as written
    prepared = prepare_config(copy.deepcopy(cluster))  # as `ray up` sees it: provider defaults merged in
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_yaml_has_a_cpu_head_and_autoscaled_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0, "a CPU head that runs no work"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2, "GPU worker types for training/bulk and for serving"
    accelerators = set()
    for name, t in gpu_types.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cluster["max_workers"], name
        assert t["node_config"]["InstanceType"], name
        accelerators |= {k for k in t["resources"] if k.startswith("accelerator_type:")}
    assert {"accelerator_type:A100", "accelerator_type:L4"} <= accelerators
    # one AMI for every node (a YAML anchor), the placeholder a reader must replace
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1


def test_cluster_yaml_installs_the_cuda_torch_first_then_this_package(cluster):
    setup = cluster["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==2.13.0" in c)
    assert "download.pytorch.org/whl/cu" in setup[torch_at], "the CUDA build, from PyTorch's index"
    package_at = next(i for i, c in enumerate(setup) if re.search(r"pip install .*(-e |causal2vec-platform)", c))
    assert torch_at < package_at
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert f"torch=={pinned}" in setup[torch_at], "the same torch version pyproject.toml pins"
    # the container's Ray must be the version jobs are submitted with
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{_ray_version()}-")
    # the synced checkout is what gets installed
    (remote, local), = cluster["file_mounts"].items()
    assert local == "." and remote in setup[package_at]
    assert any("--metrics-export-port" in c for c in cluster["head_start_ray_commands"])


# -- KubeRay manifests -----------------------------------------------------------------------------------------------
def test_manifests_are_the_expected_kinds():
    assert MANIFESTS, "deploy/ has no manifests"
    kinds = sorted(doc["kind"] for _, doc in _all_docs() if doc["apiVersion"] == "ray.io/v1")
    assert kinds == ["RayJob", "RayJob", "RayService"]
    entrypoints = " ".join(doc["spec"]["entrypoint"] for doc in _by_kind("RayJob"))
    assert "jobs/train.py" in entrypoints and "jobs/embed_corpus.py" in entrypoints
    for path, doc in _all_docs():
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), (path, doc["metadata"])


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def _pod_specs(doc: dict) -> list[dict]:
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_ray_cluster_specs_have_what_kuberay_requires(kind):
    for doc in _by_kind(kind):
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == _ray_version(), "the image's Ray version, as submitted from here"
        head = spec["headGroupSpec"]
        assert isinstance(head.get("rayStartParams", {}), dict)
        assert head["rayStartParams"].get("num-cpus") == "0", "rayStartParams values are strings; a CPU-free head"
        groups = spec["workerGroupSpecs"]
        assert groups and len({g["groupName"] for g in groups}) == len(groups)
        for group in groups:
            assert re.fullmatch(r"[a-z0-9][-a-z0-9]*", group["groupName"])
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
            assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in groups
                   for c in g["template"]["spec"]["containers"]), "a GPU worker group"
        for pod in _pod_specs(doc):
            assert pod["containers"], doc["metadata"]["name"]
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                assert container["name"] and container["image"] == IMAGE, "one image placeholder everywhere"
                limits, requests = container["resources"]["limits"], container["resources"]["requests"]
                assert limits.get("nvidia.com/gpu") == requests.get("nvidia.com/gpu"), "GPUs: requests == limits"
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"volumeMount {mount['name']!r} has no volume"


def _config_map(name: str) -> dict:
    (doc,) = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == name]
    return doc["data"]


def _mounted_config(doc: dict, path: str) -> str:
    """The text of the ConfigMap file the head pod sees at `path`."""
    head = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    directory, _, key = path.rpartition("/")
    volume = next(v for v in head["volumes"] if v["name"] == mounts[directory])
    return _config_map(volume["configMap"]["name"])[key]


def _entrypoint(doc: dict) -> tuple[str, list[str]]:
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith(CODE_DIR + "/"), argv
    script = argv[1].removeprefix(CODE_DIR + "/")
    assert (ROOT / script).is_file(), f"the entrypoint runs {script}, which this repo does not have"
    return script, argv[2:]


def test_training_rayjob_runs_a_valid_gpu_config(tmp_path):
    from causal2vec.train.config import load_config

    (doc,) = [d for d in _by_kind("RayJob") if "train.py" in d["spec"]["entrypoint"]]
    script, args = _entrypoint(doc)
    assert args[0] == "--config"
    (tmp_path / "train.yaml").write_text(_mounted_config(doc, args[1]))
    config = load_config(tmp_path / "train.yaml")  # jobs/train.py's own loader: unknown keys are errors
    assert config.ray.use_gpu and config.ray.storage_path.startswith("/mnt/")
    gpus = sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["maxReplicas"]
               for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
               for c in g["template"]["spec"]["containers"])
    assert config.ray.num_workers * config.ray.gpus_per_worker <= gpus, "the workers fit the GPU pods"
    assert str(config.export_dir).startswith("/mnt/models/")
    yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_embedding_rayjob_runs_a_valid_config(tmp_path):
    from causal2vec.embed.config import load_config

    (doc,) = [d for d in _by_kind("RayJob") if "embed_corpus.py" in d["spec"]["entrypoint"]]
    _, args = _entrypoint(doc)
    assert args[0] == "--config"
    (tmp_path / "embed.yaml").write_text(_mounted_config(doc, args[1]))
    config = load_config(str(tmp_path / "embed.yaml"))  # jobs/embed_corpus.py's own loader
    assert config.decoder.num_gpus >= 1 and 0 < config.encoder.num_gpus < 1
    assert config.table.startswith("/mnt/lancedb::") and config.model.startswith("/mnt/models/")
    (train,) = [d for d in _by_kind("RayJob") if "train.py" in d["spec"]["entrypoint"]]
    exported = yaml.safe_load(_mounted_config(train, _entrypoint(train)[1][1]))["output_dir"]
    assert config.model == exported, "it embeds with the model the training job exports"


def test_rayservice_serves_the_app_with_the_gpu_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from causal2vec.serve.app import parse_args

    (doc,) = _by_kind("RayService")
    serve_config = doc["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "serveConfigV2 is a YAML string, not a mapping"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(serve_config))
    (app,) = schema.applications
    assert app.import_path == "causal2vec.serve.app:build_app" and not app.deployments
    args = parse_args(app.args)
    assert args.decoder.ray_actor_options["num_gpus"] >= 1 and args.device == "cuda"
    # the same application and numbers as serve_configs/gpu.yaml (`serve deploy` on a launcher cluster)
    (gpu_app,) = yaml.safe_load((ROOT / "serve_configs" / "gpu.yaml").read_text())["applications"]
    assert args == parse_args(gpu_app["args"]), "deploy/rayservice.yaml and serve_configs/gpu.yaml differ"
    # the model rollout recipe: the head template's annotation follows args.model, so a new model is a new cluster
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["metadata"]["annotations"]["causal2vec.io/model"] == args.model
    assert doc["spec"]["upgradeStrategy"]["type"] == "NewCluster"
    # the files the app reads are mounted where its args say, on every pod (replicas may land anywhere)
    for pod in _pod_specs(doc):
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        for path in (args.model, args.lancedb_uri, args.api_keys_file):
            assert any(path == m or path.startswith(m + "/") for m in mounts), (path, mounts)
    # the Serve port is open on the pods KubeRay's serve service selects
    ports = {p["containerPort"] for pod in _pod_specs(doc) for c in pod["containers"] for p in c.get("ports", [])}
    assert schema.http_options.port in ports


def test_shared_storage_matches_what_the_manifests_claim():
    (claim,) = _by_kind("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    claimed = {v["persistentVolumeClaim"]["claimName"] for doc in _by_kind("RayJob") + _by_kind("RayService")
               for pod in _pod_specs(doc) for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    assert claimed == {claim["metadata"]["name"]}
    secrets = {v["secret"]["secretName"] for doc in _by_kind("RayService") for pod in _pod_specs(doc)
               for v in pod.get("volumes", []) if "secret" in v}
    assert secrets == {s["metadata"]["name"] for s in _by_kind("Secret")}
