"""Renders, lints and checks the Tollgate Helm chart with Helm's own Go SDK (helm-python-sdk) and
validates every rendered manifest against the Kubernetes schemas (kubernetes-validate).

Called by the end-to-end tests (tests/tests/e2e/helm.rs) with the project's virtualenv:

    .venv/bin/python tests/helm/chart.py lint   [-f VALUES]... [--set PATH=VALUE]...
    .venv/bin/python tests/helm/chart.py schema [-f VALUES]... [--set PATH=VALUE]...
    .venv/bin/python tests/helm/chart.py render [-f VALUES]... [--set PATH=VALUE]... --out DIR
        [--release NAME] [--namespace NS] [--secret NAME/KEY=VALUE]...

Every command prints one JSON object on stdout. `render` writes, under DIR:
    manifests.yaml            every rendered document
    files/<configmap>/<key>   each ConfigMap's data, as the pods would see it mounted
    env/<workload>.json       each container's command, its environment as Kubernetes would
                              build it (secretKeyRef values from the rendered Secrets, or --secret
                              for Secrets the chart expects to exist, then $(VAR) expansion), and
                              its volume mounts as local directories under volumes/<workload>/
                              (ConfigMaps and Secrets laid out as the kubelet does, `..data` link
                              included, so an update can be swapped in the same way)
A failure to render or a schema violation exits with status 1 and the reason on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "tollgate"
# The Kubernetes version manifests are checked against: the newest kubernetes-validate ships.
KUBE_VERSION = "1.37.0"

# Custom resources have no schema in kubernetes-validate; these are the fields the Prometheus
# operator requires of a ServiceMonitor, checked the same way.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    """The values a `helm install -f ... --set ...` would pass, merged in the same order."""
    values: dict[str, Any] = {}
    for f in args.values:
        values = deep_merge(values, helm.values_from_yaml(Path(f).read_text()))
    if args.set:
        # One parse, as `helm --set a --set b` does: `routes[0].x` and `routes[0].y` then build
        # one list element instead of the second list replacing the first.
        values = deep_merge(values, helm.parse_set_string(",".join(args.set)))
    return values


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def cmd_lint(args: argparse.Namespace) -> None:
    report = helm.lint(CHART, user_values(args), strict=True, kube_version=f"v{KUBE_VERSION}")
    print(json.dumps(report))


def cmd_schema(args: argparse.Namespace) -> None:
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(user_values(args))
        except helm.HelmValuesError as e:
            print(json.dumps({"valid": False, "error": str(e)}))
            return
    print(json.dumps({"valid": True}))


def validate_manifest(doc: dict[str, Any]) -> str:
    """Checks one manifest; returns which schema it passed."""
    if doc.get("kind") == "ServiceMonitor":
        import jsonschema

        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        return "servicemonitor (operator fields)"
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    return f"kubernetes {KUBE_VERSION} strict"


def resolve_env(
    container: dict[str, Any],
    secrets: dict[tuple[str, str], str],
    configmaps: dict[tuple[str, str], str],
) -> tuple[dict[str, str], list[str]]:
    """A container's environment as the kubelet builds it, and what could not be resolved."""
    env: dict[str, str] = {}
    missing: list[str] = []
    for e in container.get("env") or []:
        name = e["name"]
        if "value" in e:
            # $(VAR) refers to variables defined earlier in the list; unknown ones stay as is.
            env[name] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(e["value"]),
            )
            continue
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key in secrets:
                env[name] = secrets[key]
            elif not ref.get("optional"):
                missing.append(f"{name}: secret {key[0]}/{key[1]}")
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            key = (ref["name"], ref["key"])
            if key in configmaps:
                env[name] = configmaps[key]
            elif not ref.get("optional"):
                missing.append(f"{name}: configmap {key[0]}/{key[1]}")
        else:
            missing.append(f"{name}: unsupported source {sorted(source)}")
    return env, missing


def write_atomic_volume(d: Path, files: dict[str, str]) -> None:
    """Lays files out as the kubelet's atomic writer does for ConfigMap and Secret volumes:
    the data in a hidden timestamped directory, `..data` linking to it, and each visible name
    a link through `..data`, so that an update is one rename of `..data`."""
    stamp = d / "..initial"
    for path, text in files.items():
        (stamp / path).parent.mkdir(parents=True, exist_ok=True)
        (stamp / path).write_text(text)
    (d / "..data").symlink_to(stamp.name)
    for path in files:
        top = Path(path).parts[0]
        if not (d / top).exists():
            (d / top).symlink_to(Path("..data") / top)


def materialise_volumes(
    volumes: list[dict[str, Any]],
    root: Path,
    secrets: dict[tuple[str, str], str],
    configmaps: dict[tuple[str, str], str],
) -> tuple[dict[str, str], list[str]]:
    """Writes each ConfigMap / Secret volume's files (honouring `items`) into a directory of its
    own, laid out as the kubelet does, and an empty directory for the other volumes; returns
    volume name -> directory."""
    dirs: dict[str, str] = {}
    missing: list[str] = []
    for v in volumes:
        d = root / v["name"]
        d.mkdir(parents=True, exist_ok=True)
        dirs[v["name"]] = str(d)
        if "configMap" in v or "secret" in v:
            source = v.get("configMap") or v.get("secret")
            name = source.get("name") or source.get("secretName")
            data = configmaps if "configMap" in v else secrets
            keys = {k: k for (n, k) in data if n == name}
            if source.get("items"):
                keys = {i["key"]: i["path"] for i in source["items"]}
            if not keys:
                missing.append(f"volume {v['name']}: no data for {name}")
            files = {}
            for key, path in keys.items():
                if (name, key) not in data:
                    missing.append(f"volume {v['name']}: {name}/{key}")
                    continue
                files[path] = data[(name, key)]
            write_atomic_volume(d, files)
    return dirs, missing


def cmd_render(args: argparse.Namespace) -> None:
    values = user_values(args)
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as e:
            fail(f"values rejected by values.schema.json: {e}")
        try:
            rendered = chart.render(
                values, name=args.release, namespace=args.namespace, is_install=True
            )
        except helm.HelmError as e:
            fail(f"render failed: {e}")

    out = Path(args.out)
    (out / "files").mkdir(parents=True, exist_ok=True)
    (out / "env").mkdir(parents=True, exist_ok=True)

    docs: list[tuple[str, dict[str, Any]]] = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            (out / "NOTES.txt").write_text(text)
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((template, doc))
    (out / "manifests.yaml").write_text(
        yaml.safe_dump_all([d for _, d in docs], sort_keys=False)
    )

    resources = []
    errors = []
    for template, doc in docs:
        entry = {
            "template": template,
            "kind": doc.get("kind"),
            "name": doc.get("metadata", {}).get("name"),
        }
        try:
            entry["schema"] = validate_manifest(doc)
        except Exception as e:  # noqa: BLE001 - every failure is reported, not just the first
            path = ".".join(str(p) for p in getattr(e, "path", []))
            errors.append(f"{entry['kind']}/{entry['name']} ({template}): {path}: {getattr(e, 'message', e)}")
        resources.append(entry)

    secrets: dict[tuple[str, str], str] = {}
    configmaps: dict[tuple[str, str], str] = {}
    for _, doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Secret":
            for k, v in (doc.get("data") or {}).items():
                secrets[(name, k)] = base64.b64decode(v).decode()
            for k, v in (doc.get("stringData") or {}).items():
                secrets[(name, k)] = v
        elif doc["kind"] == "ConfigMap":
            for k, v in (doc.get("data") or {}).items():
                configmaps[(name, k)] = v
                target = out / "files" / name / k
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(v)
    for spec in args.secret:
        ref, _, value = spec.partition("=")
        name, _, key = ref.partition("/")
        secrets[(name, key)] = value

    workloads = {}
    for _, doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        workload = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        volumes, missing_volumes = materialise_volumes(
            pod.get("volumes") or [], out / "volumes" / workload, secrets, configmaps
        )
        for c in pod["containers"]:
            env, missing = resolve_env(c, secrets, configmaps)
            mounts = [
                {"path": m["mountPath"], "local": volumes[m["name"]]}
                for m in c.get("volumeMounts") or []
                if m["name"] in volumes
            ]
            entry = {
                "kind": doc["kind"],
                "container": c["name"],
                "command": c.get("command", []) + c.get("args", []),
                "env": env,
                "mounts": mounts,
                "unresolved": missing + missing_volumes,
            }
            workloads[f"{workload}/{c['name']}"] = entry
            (out / "env" / f"{workload}.json").write_text(json.dumps(entry, indent=1))

    summary = {"resources": resources, "errors": errors, "workloads": workloads}
    print(json.dumps(summary))
    if errors:
        fail("manifests failed schema validation:\n" + "\n".join(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("lint", "schema", "render"):
        p = sub.add_parser(name)
        p.add_argument("-f", "--values", action="append", default=[])
        p.add_argument("--set", action="append", default=[])
        if name == "render":
            p.add_argument("--out", required=True)
            p.add_argument("--release", default="edge")
            p.add_argument("--namespace", default="tollgate")
            p.add_argument("--secret", action="append", default=[])
    args = parser.parse_args()
    {"lint": cmd_lint, "schema": cmd_schema, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()
