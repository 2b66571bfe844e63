"""KubeRay manifests: the structure the operator expects, and a serveConfigV2 the app builder accepts."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]


def test_rayjob_structure_and_entrypoint_parses():
    job = load("rayjob-train.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    check_cluster_spec(job["spec"]["rayClusterSpec"])
    # the entrypoint's arguments are what jobs/train.py accepts
    import shlex
    import sys

    sys.path.insert(0, str(ROOT / "jobs"))
    from train import parse_args

    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    args = parse_args(argv[2:])
    assert args.storage_path.startswith("s3://")
    from mtl_ray.config import load_config

    cfg = load_config(ROOT / args.config, args.overrides)
    assert cfg.ray.num_workers == 2 and cfg.ray.use_gpu


def test_rayservice_structure_and_serve_config():
    svc = load("rayservice.yaml")
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")
    check_cluster_spec(svc["spec"]["rayClusterConfig"])
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == "mtl_ray.ray.serve.app:build_app"
    names = {d["name"] for d in app["deployments"]}
    assert {"Ingress", "Encoder"} <= names and any(n.startswith("Head-") for n in names)
    for d in app["deployments"]:
        auto = d["autoscaling_config"]
        assert auto["min_replicas"] <= auto["max_replicas"]
    # the app args validate against the typed serve config (checkpoint existence is checked at deploy)
    from mtl_ray.serving.config import ServeConfig

    ServeConfig.model_validate(app["args"])


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayservice.yaml"])
def test_manifests_are_single_documents(name):
    assert len(list(yaml.safe_load_all((K8S / name).read_text()))) == 1


# --------------------------------------------------------------------------- secrets (docs/security.md)


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def _mounted_files(pod: dict) -> dict[str, str]:
    """mountPath -> secretName of every read-only Secret volume mounted in the pod's first container."""
    secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    out = {}
    for m in pod["containers"][0].get("volumeMounts", []):
        if m["name"] in secrets:
            assert m.get("readOnly") is True, m
            out[m["mountPath"]] = secrets[m["name"]]["secretName"]
    return out


def _check_mounted(pods: list[dict], path: str) -> str:
    """Every pod mounts a Secret at the directory holding ``path``; returns that Secret's name."""
    names = set()
    for pod in pods:
        mounts = _mounted_files(pod)
        parent = str(Path(path).parent)
        assert parent in mounts, (path, sorted(mounts))
        names.add(mounts[parent])
    (name,) = names
    return name


def test_rayjob_mounts_the_keys_training_encrypts_and_signs_with():
    job = load("rayjob-train.yaml")
    import shlex

    from mtl_ray.config import load_config

    argv = shlex.split(job["spec"]["entrypoint"])
    cfg = load_config(ROOT / argv[argv.index("--config") + 1], [a for a in argv if "=" in a and "." in a.split("=")[0]])
    pods = _pods(job["spec"]["rayClusterSpec"])
    assert _check_mounted(pods, cfg.checkpoint.encryption.key_file) == "mtl-ray-checkpoint-key"
    assert _check_mounted(pods, cfg.checkpoint.signing.private_key_file) == "mtl-ray-signing-key"
    for pod in pods:  # private keys readable by their owner only
        assert all(v["secret"].get("defaultMode") == 0o400 for v in pod["volumes"])


def test_rayservice_mounts_the_key_the_trusted_public_key_and_tls():
    svc = load("rayservice.yaml")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    from mtl_ray.serving.config import ServeConfig

    args = ServeConfig.model_validate(serve_cfg["applications"][0]["args"])
    pods = _pods(svc["spec"]["rayClusterConfig"])
    assert _check_mounted(pods, args.encryption.key_file) == "mtl-ray-checkpoint-key"
    assert _check_mounted(pods, args.signing.trusted_public_key_file) == "mtl-ray-trusted-key"
    http = serve_cfg["http_options"]
    assert _check_mounted(pods, http["ssl_certfile"]) == _check_mounted(pods, http["ssl_keyfile"]) == "mtl-ray-tls"
    from ray.serve.config import HTTPOptions  # the fields exist in this Ray (2.60)

    HTTPOptions(**http)


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayservice.yaml"])
def test_manifests_hold_no_key_material(name):
    text = (K8S / name).read_text()
    assert "PRIVATE KEY" not in text and "kind: Secret" not in text and "stringData" not in text
