"""deploy/: every manifest valid against the Kubernetes API schemas (offline, kubernetes-validate;
custom resources against their CRD's schema), the custom-networking overlay rendered as kustomize
would, the DaemonSet's operator-facing choices, and the IAM policy naming exactly the EC2 actions
the adapter calls.

No kubectl/kustomize can be installed here, so `render` applies the subset of kustomize the
overlays use (resources, JSON 6902 `patches` by target) and refuses anything else.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent import probe
from agent.cni import install

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.31"
KUSTOMIZATIONS = [
    DEPLOY,
    DEPLOY / "overlays" / "custom-networking",
    DEPLOY / "overlays" / "metrics-loopback",
]


def _patch(doc: Any, op: dict[str, Any]) -> None:
    """One RFC 6902 `add` or `replace` (all the overlays use)."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    if op["op"] == "add" and isinstance(doc, list):
        doc.insert(len(doc) if last == "-" else int(last), op["value"])
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace" and last not in doc:
            raise KeyError(op["path"])
        doc[int(last) if isinstance(doc, list) else last] = op["value"]
    else:
        raise ValueError(f"unsupported patch op {op['op']}")


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    have = {"group": group, "version": version, "kind": obj["kind"]}
    have["name"] = obj["metadata"]["name"]
    return all(have[key] == value for key, value in target.items())


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` would print (for the subset used here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{directory}: render() does not implement {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects = copy.deepcopy(objects)
    for patch in kustomization.get("patches", []):
        targets = [o for o in objects if _matches(o, patch["target"])]
        assert len(targets) == 1, f"{directory}: patch target {patch['target']} matched {targets}"
        for op in yaml.safe_load(patch["patch"]):
            _patch(targets[0], op)
    return objects


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD in deploy/."""
    schemas = {}
    for path in DEPLOY.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def daemonset() -> dict[str, Any]:
    [ds] = [o for o in render(DEPLOY) if o["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_manifest_is_valid_against_the_api_schemas(directory: Path) -> None:
    schemas = crd_schemas()
    objects = render(directory)
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in schemas:
            jsonschema.validate(obj, schemas[key])
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_wrong_field() -> None:
    # The check above can fail: a misspelt field is refused.
    ds = daemonset()
    ds["spec"]["template"]["spec"]["dnsPolicey"] = "Default"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBERNETES_VERSION, strict=True)


def test_every_deploy_yaml_is_in_the_base_kustomization_or_uninstalls() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "uninstall.yaml"}
    assert files == listed


def test_uninstall_daemonset_is_valid_and_mounts_what_the_agent_did() -> None:
    [ds] = [d for d in yaml.safe_load_all((DEPLOY / "uninstall.yaml").read_text()) if d]
    kubernetes_validate.validate(ds, KUBERNETES_VERSION, strict=True)
    pod = ds["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["vpcni-ctl", "uninstall"]
    assert init["securityContext"]["privileged"] is True and pod["hostNetwork"] is True

    def mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
        return {paths[m["name"]]: m["mountPath"] for m in container["volumeMounts"]}

    agent_pod = daemonset()["spec"]["template"]["spec"]
    agent_mounts = mounts(agent_pod, agent_pod["containers"][0])
    used = mounts(pod, init)
    assert set(used) == {"/opt/cni/bin", "/etc/cni/net.d", "/run/vpcni", "/sys/fs/bpf"}
    assert all(agent_mounts[host] == inside for host, inside in used.items())
    assert init["image"] == agent_pod["containers"][0]["image"]


def test_custom_networking_overlay_turns_it_on_by_zone() -> None:
    objects = render(DEPLOY / "overlays" / "custom-networking")
    [ds] = [o for o in objects if o["kind"] == "DaemonSet"]
    env = {
        e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG"] == "true"
    assert env["ENI_CONFIG_LABEL_DEF"] == "topology.kubernetes.io/zone"
    assert "fieldRef" in next(e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]
                              if e["name"] == "MY_NODE_NAME")["valueFrom"]  # fmt: skip
    eniconfigs = [o for o in objects if o["kind"] == "ENIConfig"]
    assert eniconfigs and all(o["spec"]["subnet"].startswith("subnet-") for o in eniconfigs)


def test_daemonset_choices_an_operator_expects() -> None:
    ds = daemonset()
    template = ds["spec"]["template"]
    pod = template["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"  # no dependency on CoreDNS, which needs this CNI
    assert pod["priorityClassName"] == "system-node-critical"
    # cni-metrics-helper finds the pods by k8s-app=aws-node; the selector stays vpcni's own.
    assert template["metadata"]["labels"]["k8s-app"] == "aws-node"
    assert ds["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "vpcni"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    [term] = terms["nodeSelectorTerms"]
    compute = next(e for e in term["matchExpressions"] if e["key"].endswith("compute-type"))
    assert compute["operator"] == "NotIn"
    assert set(compute["values"]) == {"fargate", "hybrid", "auto"}
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Probes go through the socket (agent.probe), never the introspection port.
    for kind, check in (("startupProbe", "live"), ("livenessProbe", "live"),
                        ("readinessProbe", "ready")):  # fmt: skip
        command = container[kind]["exec"]["command"]
        assert command[1:] == ["-m", "agent.probe", check], command
        assert check in probe.PATHS
    assert env["VPCNI_SOCKET"] == "/run/vpcni/agent.sock"
    assert env["VPCNI_STATE_DIR"] == "/run/vpcni"
    assert "limits" not in container["resources"]
    # Every hostPath the agent needs is mounted where the image's installer and agent look.
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {volumes[m["name"]]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/opt/cni/bin", "/etc/cni/net.d", "/run/vpcni", "/sys/fs/bpf",
                           "/run/netns", "/run/aws-node"}  # fmt: skip
    # aws-node's checkpoint, adopted at the first start, is where the agent looks for it.
    aws_node = Path(env["VPCNI_AWS_NODE_CHECKPOINT"]).parent
    assert mounts[str(aws_node)]["mountPath"] == str(aws_node)
    assert mounts["/opt/cni/bin"]["mountPath"] == "/host/opt/cni/bin"
    assert mounts["/etc/cni/net.d"]["mountPath"] == "/host/etc/cni/net.d"
    assert mounts["/run/vpcni"]["mountPath"] == str(Path(env["VPCNI_SOCKET"]).parent)
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"
    # The installer's and the agent's defaults are where the node's directories are mounted.
    defaults = install.Paths.from_env({})
    assert str(defaults.bin_dir) == mounts["/opt/cni/bin"]["mountPath"]
    assert str(defaults.conf_dir) == mounts["/etc/cni/net.d"]["mountPath"]
    template = json.loads((DEPLOY / "10-vpcni.conflist").read_text())
    assert env["VPCNI_SOCKET"] == template["plugins"][0]["socket"]
    [init] = pod["initContainers"]
    assert init["command"] == ["/opt/vpcni/node-init.sh"]
    assert (DEPLOY / "node-init.sh").exists()
    assert init["image"] == container["image"]


def test_rbac_is_what_the_kubernetes_port_uses() -> None:
    [role] = [o for o in render(DEPLOY) if o["kind"] == "ClusterRole"]
    granted = {(r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"]
               for res in r["resources"]}  # fmt: skip
    # agent/kube.py lists and watches the Node and the ENIConfigs; it never gets or writes.
    source = (REPO / "agent" / "kube.py").read_text()
    used = {
        name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "client"
        for name in [node.attr]
    }
    assert used == {"list", "watch"}
    assert granted == {("", "nodes"): used, ("crd.k8s.amazonaws.com", "eniconfigs"): used}


def ec2_actions_called() -> set[str]:
    """Every action name the EC2 adapter passes to its one call path, `self._call(ACTION, ...)`."""
    tree = ast.parse((REPO / "agent" / "cloud" / "aws.py").read_text())
    actions = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_call"
        ):
            first = node.args[0]
            assert isinstance(first, ast.Constant), ast.dump(node)
            actions.add(str(first.value))
    return actions


def test_iam_policy_lists_exactly_the_ec2_actions_the_adapter_calls() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    granted = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        granted |= set(statement["Action"])
    assert all(a.startswith("ec2:") for a in granted), granted
    called = ec2_actions_called()
    assert "CreateNetworkInterface" in called  # the scan found the adapter's calls
    assert {a.removeprefix("ec2:") for a in granted} == called


def test_the_metrics_loopback_overlay_binds_metrics_to_loopback() -> None:
    # Issue 8.6: pods on the node can reach the default :61678; deploy/ offers a loopback bind.
    [daemonset] = [
        o for o in render(DEPLOY / "overlays" / "metrics-loopback") if o["kind"] == "DaemonSet"
    ]
    env = {
        e["name"]: e.get("value")
        for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["VPCNI_METRICS_BIND_ADDRESS"] == "127.0.0.1:61678"
