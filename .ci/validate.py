#!/usr/bin/env python3
"""Validation helpers for .ci/packaging.sh (manifests, rendered chart, examples).

Subcommands (each prints one PASS/FAIL line per checked object and exits non-zero on failure):

  k8s --crd CRD.yaml --kube-versions 1.28,1.37 FILE...
      Every document of every FILE is validated strictly (unknown fields are errors) against
      the Kubernetes OpenAPI schemas bundled by `kubernetes-validate`, for each version.
      Documents of a kind defined by CRD.yaml (CodexAgent) are validated instead against the
      CRD's openAPIV3Schema, the way the API server does with strict field validation (the
      default of `kubectl apply`): structural schema, unknown fields refused, nullable, int-or-string,
      and the CRD's CEL `x-kubernetes-validations` rules (evaluated with cel-python).
      ServiceMonitor (monitoring.coreos.com/v1) is checked against a small built-in schema.
      Anything else without a schema is a failure.

  crd-sanity CRD.yaml
      The CRD is the CodexAgent CRD the chart and examples are built for.

  crd-render RENDERED.yaml CRD.yaml
      The CRD in a chart render carries the same spec as CRD.yaml (the template's fromYaml/toYaml
      round trip changes nothing) plus helm.sh/resource-policy: keep.

  examples --crd CRD.yaml FILE...
      Every Secret an example's CodexAgent references (provider.apiKeySecretRef,
      provider.authJsonSecretRef, auth.jwtSecretRef, imagePullSecrets) is defined in the same file
      with that key; the examples together cover every provider; and the CRD check has teeth
      (invalid CodexAgents derived from the examples are refused).
"""
import argparse
import copy
import sys

import yaml
import jsonschema

FAILED = False


def result(ok, what, detail="", show=False):
    """One PASS/FAIL line; `detail` is printed under a FAIL (and under a PASS when `show`)."""
    global FAILED
    if not ok:
        FAILED = True
    line = f"{'PASS' if ok else 'FAIL'}: {what}"
    if detail and (show or not ok):
        line += f"\n      {detail}"
    print(line, flush=True)


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def describe(doc):
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


# ---------------------------------------------------------------------------------------------
# CRD schema -> JSON Schema with the API server's strict semantics.

def structural(schema, root=False):
    """Copy of an openAPIV3Schema with unknown fields refused, nullable and int-or-string mapped."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if node.get("nullable") and "type" in node:
            t = node["type"]
            node["type"] = [t, "null"] if isinstance(t, str) else list(t) + ["null"]
        if (
            node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"])
        ) and "properties" in node:
            if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "definitions", "$defs"):
            for sub in (node.get(key) or {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key) or []:
                walk(sub)

    walk(s)
    if root:
        props = s.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault(
            "metadata",
            {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        )
        s["additionalProperties"] = False
    return s


def cel_errors(schema, value, path="spec"):
    """Evaluates the x-kubernetes-validations rules of `schema` over `value`, recursively."""
    import celpy

    errors = []
    env = celpy.Environment()

    def walk(node, val, where):
        if not isinstance(node, dict) or val is None:
            return
        for rule in node.get("x-kubernetes-validations") or []:
            try:
                prog = env.program(env.compile(rule["rule"]))
                ok = prog.evaluate({"self": celpy.json_to_cel(val)})
            except Exception as e:  # a rule cel-python cannot evaluate is a failure to look at
                errors.append(f"{where}: rule {rule['rule']!r} could not be evaluated: {e}")
                continue
            if isinstance(ok, Exception) or not bool(ok):
                errors.append(f"{where}: {rule.get('message') or rule['rule']}")
        if isinstance(val, dict):
            for k, sub in (node.get("properties") or {}).items():
                if k in val:
                    walk(sub, val[k], f"{where}.{k}")
            ap = node.get("additionalProperties")
            if isinstance(ap, dict):
                for k, v in val.items():
                    if k not in (node.get("properties") or {}):
                        walk(ap, v, f"{where}.{k}")
        elif isinstance(val, list) and isinstance(node.get("items"), dict):
            for i, v in enumerate(val):
                walk(node["items"], v, f"{where}[{i}]")

    walk(schema, value, path)
    return errors


def crd_schemas(crd_path):
    """{(group/version, kind): openAPIV3Schema} for every served version of every CRD in the file."""
    out = {}
    for crd in load_docs(crd_path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for v in spec["versions"]:
            if v.get("served", True):
                out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
        },
    },
}


def cmd_k8s(args):
    import kubernetes_validate

    crds = crd_schemas(args.crd) if args.crd else {}
    versions = [v.strip() for v in args.kube_versions.split(",") if v.strip()]
    total = 0
    for path in args.files:
        try:
            docs = load_docs(path)
        except (OSError, yaml.YAMLError) as e:
            result(False, f"{path}: readable YAML", str(e))
            continue
        if not docs:
            result(False, f"{path}: contains at least one document")
        for doc in docs:
            total += 1
            what = f"{path}: {describe(doc)}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in crds:
                errs = crd_errors(crds, doc)
                result(not errs, f"{what} valid against the CRD schema (+CEL rules)", "; ".join(errs[:5]))
                continue
            if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
                errs = [e.message for e in jsonschema.Draft7Validator(SERVICE_MONITOR).iter_errors(doc)]
                result(not errs, f"{what} valid against the built-in ServiceMonitor schema", "; ".join(errs[:5]))
                continue
            errs = []
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError as e:
                    errs.append(f"{version}: no schema ({e})")
                except kubernetes_validate.ValidationError as e:
                    loc = ".".join(map(str, getattr(e, "path", []) or []))
                    errs.append(f"{version}: {loc}: {e.message}")
                except Exception as e:
                    errs.append(f"{version}: {e!r}")
            result(not errs, f"{what} valid for Kubernetes {', '.join(versions)} (strict)", "; ".join(errs))
    if total == 0:
        result(False, "at least one Kubernetes object was checked")


def cmd_crd_sanity(args):
    docs = load_docs(args.crd)
    ok = (
        len(docs) == 1
        and docs[0].get("kind") == "CustomResourceDefinition"
        and docs[0]["spec"]["group"] == "agents.codex-operator.dev"
        and docs[0]["spec"]["names"]["kind"] == "CodexAgent"
        and docs[0]["spec"]["scope"] == "Namespaced"
        and any(v["name"] == "v1alpha1" and v.get("storage") for v in docs[0]["spec"]["versions"])
    )
    result(ok, f"{args.crd} is the CodexAgent CRD (agents.codex-operator.dev, v1alpha1, Namespaced)")


def cmd_crd_render(args):
    want = load_docs(args.crd)[0]
    got = [d for d in load_docs(args.rendered) if d.get("kind") == "CustomResourceDefinition"]
    if len(got) != 1:
        result(False, f"{args.rendered} holds exactly one CRD", f"found {len(got)}")
        return
    got = got[0]
    same = got.get("spec") == want.get("spec") and got["metadata"]["name"] == want["metadata"]["name"]
    result(same, f"the chart's CRD in {args.rendered} has the spec of {args.crd}")
    keep = (got["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
    result(keep, "the chart's CRD is annotated helm.sh/resource-policy: keep")


def crd_errors(crds, doc):
    schema = crds[(doc.get("apiVersion"), doc.get("kind"))]
    errs = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(structural(schema, root=True)).iter_errors(doc)
    ]
    return errs or cel_errors(schema.get("properties", {}).get("spec", {}), doc.get("spec"))


def cmd_examples(args):
    crds = crd_schemas(args.crd)
    seen = set()
    agents = []
    for path in args.files:
        docs = load_docs(path)
        secrets = {}
        for d in docs:
            if d.get("kind") == "Secret":
                keys = set((d.get("data") or {}).keys()) | set((d.get("stringData") or {}).keys())
                secrets[d["metadata"]["name"]] = keys
        for d in docs:
            if d.get("kind") != "CodexAgent":
                continue
            agents.append(d)
            spec = d.get("spec") or {}
            prov = spec.get("provider") or {}
            refs = [prov.get("apiKeySecretRef"), prov.get("authJsonSecretRef"), (spec.get("auth") or {}).get("jwtSecretRef")]
            missing = [
                f"{r['name']}/{r['key']}" for r in refs if r and r.get("key") not in secrets.get(r.get("name"), set())
            ]
            missing += [
                p["name"] for p in spec.get("imagePullSecrets") or [] if p.get("name") not in secrets
            ]
            result(not missing, f"{path}: {describe(d)} has every Secret it references", f"missing: {missing}")
            kind = prov.get("type")
            if kind == "openai":
                kind += "/authJson" if prov.get("authJsonSecretRef") else "/apiKey"
            elif kind == "local":
                kind += "/" + (prov.get("local") or {}).get("engine", "?")
                if spec.get("gpu"):
                    kind += "+gpu"
            seen.add(kind)
    want = {"openai/authJson", "openai/apiKey", "local/ollama+gpu", "local/vllm+gpu", "local/lmstudio+gpu"}
    result(want <= seen, f"examples cover {sorted(want)}", f"missing: {sorted(want - seen)}")

    # The check has teeth: each mutation of a valid example must be refused.
    if not agents:
        result(False, "examples contain a CodexAgent")
        return
    base = agents[0]
    mutations = {
        "unknown spec field": lambda d: d["spec"].__setitem__("modle", "x"),
        "unknown provider type": lambda d: d["spec"]["provider"].__setitem__("type", "azure"),
        "custom provider without baseUrl (CEL)": lambda d: d["spec"].__setitem__("provider", {"type": "custom"}),
        "model in spec.sidecar (CEL)": lambda d: d["spec"].setdefault("sidecar", {}).__setitem__("model", "m"),
        "gpu.count 0": lambda d: d["spec"].__setitem__("gpu", {"count": 0}),
        "local port 8080 (CEL)": lambda d: d["spec"].__setitem__(
            "provider", {"type": "local", "local": {"engine": "vllm", "port": 8080}}
        ),
        "missing model": lambda d: d["spec"].pop("model"),
    }
    for name, mutate in mutations.items():
        bad = copy.deepcopy(base)
        mutate(bad)
        errs = crd_errors(crds, bad)
        result(bool(errs), f"CRD check refuses a CodexAgent with {name}", "; ".join(errs[:2]) if errs else "accepted", show=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("--crd")
    k.add_argument("--kube-versions", default="1.28,1.37")
    k.add_argument("files", nargs="+")
    c = sub.add_parser("crd-sanity")
    c.add_argument("crd")
    r = sub.add_parser("crd-render")
    r.add_argument("rendered")
    r.add_argument("crd")
    e = sub.add_parser("examples")
    e.add_argument("--crd", required=True)
    e.add_argument("files", nargs="+")
    args = p.parse_args()
    {"k8s": cmd_k8s, "crd-sanity": cmd_crd_sanity, "crd-render": cmd_crd_render,
     "examples": cmd_examples}[args.cmd](args)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
