#!/usr/bin/env bash
# End to end on kind: a real cluster, real images, KubeRay, the edgetune chart with MinIO, and the
# quickstart FineTuneJob trained by Ray Train and exported to the edge node.
#
#   hack/e2e-kind.sh                     (from anywhere; needs docker with a reachable engine, kind, helm, kubectl)
#
# Steps: kind cluster from kind-config.yaml -> build edgetune/operator:e2e and edgetune/trainer:e2e and
# load them into the nodes -> KubeRay operator (Helm) -> edgetune (charts/edgetune, minio.enabled=true,
# watching $NAMESPACE) -> upload examples/quickstart/ to s3://edgetune/quickstart/ in MinIO -> apply
# examples/quickstart-kind.yaml -> wait for phase Succeeded -> print .status.exports and the export's
# manifest.json. On failure: describe, events, operator / KubeRay / job pod logs, RayJobs and pods.
# The cluster is deleted on exit unless KEEP_CLUSTER=1 (a cluster that already existed is reused and kept).
#
# Environment:
#   CLUSTER          kind cluster name (edgetune-e2e)
#   KEEP_CLUSTER     1: keep the cluster (and its kubeconfig) after the run
#   NAMESPACE        namespace of the FineTuneJob, watched by the operator (default)
#   RELEASE_NS       namespace of the edgetune release and MinIO (edgetune-system)
#   KUBERAY_VERSION  KubeRay operator chart version (1.7.0)
#   JOB_TIMEOUT      seconds to wait for the FineTuneJob to succeed (1800)
#   KIND_NODE_IMAGE  e.g. kindest/node:v1.35.x (default: the kind release's default)
#   TORCH_INDEX_URL  extra pip index for torch in the trainer image; default the CPU wheels
#                    (https://download.pytorch.org/whl/cpu: kind has no GPUs, and the image is GBs
#                    smaller); set it empty to take torch (with CUDA) from PyPI
#   PYTHON           a Python with boto3 for the upload (default: .venv/bin/python, then python3)
#   MINIO_LOCAL_PORT local port for `kubectl port-forward` to MinIO (19000)
#   SKIP_BUILD       1: do not build the images (they must exist locally already)
#   POLL_SECONDS     how often the job's status is polled while waiting (10)
#
# Resources: the job asks for a Ray head (1 CPU, 2Gi), 2 workers (1 CPU, 2Gi each) and an export pod
# (1 CPU, 2Gi) on top of KubeRay and MinIO: give Docker at least 4 CPUs and 10 GB of memory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLUSTER=${CLUSTER:-edgetune-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
NAMESPACE=${NAMESPACE:-default}
RELEASE_NS=${RELEASE_NS:-edgetune-system}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.7.0}
JOB_TIMEOUT=${JOB_TIMEOUT:-1800}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
MINIO_LOCAL_PORT=${MINIO_LOCAL_PORT:-19000}
SKIP_BUILD=${SKIP_BUILD:-0}

JOB_NAME=quickstart-kind   # metadata.name of $JOB_FILE (examples are named after their file)
JOB_FILE=examples/quickstart-kind.yaml
OPERATOR_IMAGE=edgetune/operator:e2e
TRAINER_IMAGE=edgetune/trainer:e2e
MINIO_SERVICE=edgetune-minio
MINIO_SECRET=edgetune-minio
BUCKET=edgetune
PREFIX=quickstart

# Our own kubeconfig: the run never touches ~/.kube/config or the current context.
WORK_DIR=$ROOT/.edgetune/e2e
export KUBECONFIG=$WORK_DIR/kubeconfig-$CLUSTER

log() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'e2e-kind: %s\n' "$*" >&2
  exit 1
}

# --- prerequisites, all checked before anything is created -----------------------------------------

need() {
  command -v "$1" > /dev/null 2>&1 || die "'$1' is not on PATH: $2"
}
need docker "install Docker (https://docs.docker.com/engine/install/)"
need kind "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
need helm "install Helm 3.8+ (https://helm.sh/docs/intro/install/, or hack/fetch-helm.sh)"
need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/, or hack/fetch-helm.sh)"
if ! docker_error=$(docker info 2>&1 > /dev/null); then
  die "the Docker engine is not reachable ('docker info' failed): start the daemon or set DOCKER_HOST.
${docker_error}"
fi
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c "import boto3" 2> /dev/null \
  || die "'$PYTHON' cannot import boto3 (needed to upload the quickstart to MinIO): run 'make setup' or set PYTHON"
[[ -f charts/edgetune/Chart.yaml ]] || die "charts/edgetune/Chart.yaml is missing"
[[ -d examples/quickstart/tiny-bert && -f examples/quickstart/reviews.jsonl ]] \
  || die "examples/quickstart/ is incomplete (tiny-bert/ and reviews.jsonl)"
[[ $JOB_TIMEOUT =~ ^[0-9]+$ ]] || die "JOB_TIMEOUT must be a number of seconds (got '$JOB_TIMEOUT')"
mkdir -p "$WORK_DIR"

# --- teardown ------------------------------------------------------------------------------------

CREATED_CLUSTER=0
CLUSTER_UP=0
PORT_FORWARD_PID=

stop_port_forward() {
  if [[ -n $PORT_FORWARD_PID ]]; then
    kill "$PORT_FORWARD_PID" 2> /dev/null || true
    wait "$PORT_FORWARD_PID" 2> /dev/null || true
    PORT_FORWARD_PID=
  fi
}

diagnostics() {
  set +e
  log "diagnostics"
  echo "--- FineTuneJob"
  kubectl -n "$NAMESPACE" get finetunejob "$JOB_NAME" -o yaml
  kubectl -n "$NAMESPACE" describe finetunejob "$JOB_NAME"
  echo "--- RayJobs, RayClusters, Jobs"
  kubectl get rayjobs,rayclusters,jobs -A -o wide
  kubectl -n "$NAMESPACE" describe rayjobs
  echo "--- nodes and pods"
  kubectl get nodes -o wide --show-labels
  kubectl get pods -A -o wide
  echo "--- events ($NAMESPACE, $RELEASE_NS)"
  kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp
  kubectl -n "$RELEASE_NS" get events --sort-by=.lastTimestamp
  local pod
  for pod in $(kubectl -n "$RELEASE_NS" get pods -o name); do
    echo "--- logs $RELEASE_NS/$pod (operator and MinIO)"
    kubectl -n "$RELEASE_NS" logs "$pod" --all-containers --tail=400
  done
  # Ray head and workers, KubeRay's submitter, export Jobs: everything in the job's namespace.
  for pod in $(kubectl -n "$NAMESPACE" get pods -o name); do
    echo "--- logs $NAMESPACE/$pod"
    kubectl -n "$NAMESPACE" logs "$pod" --all-containers --tail=300
  done
  echo "--- logs KubeRay operator"
  kubectl -n kuberay-system logs deploy/kuberay-operator --tail=200
  set -e
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  stop_port_forward
  if ((rc != 0)) && ((CLUSTER_UP)); then
    diagnostics
  fi
  if ((CREATED_CLUSTER)) && [[ $KEEP_CLUSTER != 1 ]]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER"
    rm -f "$KUBECONFIG"
  elif ((CLUSTER_UP)); then
    log "cluster $CLUSTER kept: export KUBECONFIG=$KUBECONFIG   (kind delete cluster --name $CLUSTER)"
  fi
  if ((rc == 0)); then
    echo "e2e-kind: PASSED"
  else
    echo "e2e-kind: FAILED (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. cluster ---------------------------------------------------------------------------------

if kind get clusters 2> /dev/null | grep -qx "$CLUSTER"; then
  log "reusing existing kind cluster $CLUSTER (it is kept afterwards)"
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  log "creating kind cluster $CLUSTER from kind-config.yaml"
  CREATED_CLUSTER=1
  kind create cluster --config kind-config.yaml --name "$CLUSTER" --kubeconfig "$KUBECONFIG" \
    --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
CLUSTER_UP=1
kubectl get nodes -L edgetune.dev/pool -L edgetune.dev/edge
[[ -n $(kubectl get nodes -l edgetune.dev/pool=train -o name) ]] || die "no node labelled edgetune.dev/pool=train"
[[ -n $(kubectl get nodes -l edgetune.dev/edge=true -o name) ]] || die "no node labelled edgetune.dev/edge=true"

# --- 2. images ----------------------------------------------------------------------------------

if [[ $SKIP_BUILD != 1 ]]; then
  log "building $OPERATOR_IMAGE"
  docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" \
    --build-arg REVISION="$(git rev-parse HEAD 2> /dev/null || echo unknown)" .
  log "building $TRAINER_IMAGE (torch index: ${TORCH_INDEX_URL:-PyPI})"
  docker build -f trainer/Dockerfile -t "$TRAINER_IMAGE" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
    --build-arg REVISION="$(git rev-parse HEAD 2> /dev/null || echo unknown)" .
fi
# Workers only: the control-plane node is tainted and runs none of this.
workers=$(kind get nodes --name "$CLUSTER" | grep -v -- '-control-plane$' | paste -sd, -)
for image in "$OPERATOR_IMAGE" "$TRAINER_IMAGE"; do
  log "loading $image into $workers"
  kind load docker-image "$image" --name "$CLUSTER" --nodes "$workers"
done

# --- 3. KubeRay ---------------------------------------------------------------------------------

log "installing the KubeRay operator $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  -n kuberay-system --create-namespace --wait --timeout 10m

# --- 4. edgetune ----------------------------------------------------------------------------------

log "installing edgetune (charts/edgetune, MinIO enabled, watching namespace $NAMESPACE)"
helm upgrade --install edgetune charts/edgetune -n "$RELEASE_NS" --create-namespace \
  --set image.repository=edgetune/operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set trainer.image.repository=edgetune/trainer --set trainer.image.tag=e2e \
  --set minio.enabled=true \
  --set "watch.namespaces={$NAMESPACE}" \
  --wait --timeout 10m
kubectl get crd finetunejobs.edgetune.dev > /dev/null

# --- 5. quickstart data into MinIO ----------------------------------------------------------------

# The job's pods read the Secret in their own namespace; fall back to the release's.
secret_ns=$NAMESPACE
if ! kubectl -n "$secret_ns" get secret "$MINIO_SECRET" > /dev/null 2>&1; then
  secret_ns=$RELEASE_NS
fi
MINIO_SECRET_JSON=$(kubectl -n "$secret_ns" get secret "$MINIO_SECRET" -o json) \
  || die "Secret $MINIO_SECRET not found in $NAMESPACE nor $RELEASE_NS"
export MINIO_SECRET_JSON

start_port_forward() {
  stop_port_forward
  kubectl -n "$RELEASE_NS" port-forward "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000" \
    > "$WORK_DIR/port-forward.log" 2>&1 &
  PORT_FORWARD_PID=$!
}

# s3 ACTION [ARGS]: boto3 against MinIO through the port-forward, credentials from the Secret.
s3() {
  MINIO_ENDPOINT=http://127.0.0.1:$MINIO_LOCAL_PORT "$PYTHON" - "$@" << 'PY'
import base64
import json
import os
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

data = json.loads(os.environ["MINIO_SECRET_JSON"])["data"]
key_id, secret = (base64.b64decode(data[k]).decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
client = boto3.client(
    "s3",
    endpoint_url=os.environ["MINIO_ENDPOINT"],
    aws_access_key_id=key_id,
    aws_secret_access_key=secret,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
)


def wait_ready() -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            return
        except (EndpointConnectionError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


action, args = sys.argv[1], sys.argv[2:]
wait_ready()
if action == "upload":  # upload BUCKET PREFIX DIR
    bucket, prefix, folder = args
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        client.upload_file(str(path), bucket, key)
        print(f"  s3://{bucket}/{key} ({path.stat().st_size} bytes)")
elif action == "manifest":  # manifest S3_URI_OF_EXPORT_FOLDER
    bucket, _, key = args[0][len("s3://") :].partition("/")
    body = client.get_object(Bucket=bucket, Key=f"{key.rstrip('/')}/manifest.json")["Body"].read()
    print(json.dumps(json.loads(body), indent=2, sort_keys=True))
else:
    sys.exit(f"unknown action {action}")
PY
}

log "uploading examples/quickstart/ to s3://$BUCKET/$PREFIX/ (MinIO, credentials from $secret_ns/$MINIO_SECRET)"
start_port_forward
s3 upload "$BUCKET" "$PREFIX" examples/quickstart
stop_port_forward

# --- 6. the FineTuneJob -------------------------------------------------------------------------

log "applying $JOB_FILE in namespace $NAMESPACE"
kubectl -n "$NAMESPACE" delete finetunejob "$JOB_NAME" --ignore-not-found --wait=true
kubectl -n "$NAMESPACE" apply -f "$JOB_FILE"

log "waiting up to ${JOB_TIMEOUT}s for FineTuneJob $JOB_NAME to reach phase Succeeded"
deadline=$((SECONDS + JOB_TIMEOUT))
last=
while :; do
  line=$(kubectl -n "$NAMESPACE" get finetunejob "$JOB_NAME" \
    -o jsonpath='{.status.phase} attempt={.status.attempt} progress={.status.progress.percent}% loss={.status.progress.loss}' \
    2> /dev/null || true)
  phase=${line%% *}
  if [[ $line != "$last" ]]; then
    printf '  [%4ds] %s\n' "$SECONDS" "${line:-(no status yet)}"
    last=$line
  fi
  case $phase in
    Succeeded) break ;;
    Failed) die "FineTuneJob $JOB_NAME failed" ;;
  esac
  ((SECONDS < deadline)) || die "FineTuneJob $JOB_NAME did not succeed within ${JOB_TIMEOUT}s (phase: ${phase:-none})"
  sleep ${POLL_SECONDS:-10}
done
# The same condition as a kubectl check, for the record.
kubectl -n "$NAMESPACE" wait --for=jsonpath='{.status.phase}'=Succeeded "finetunejob/$JOB_NAME" --timeout=30s

# --- 7. results -----------------------------------------------------------------------------------

log "status.exports"
exports_json=$(kubectl -n "$NAMESPACE" get finetunejob "$JOB_NAME" -o jsonpath='{.status.exports}')
printf '%s' "$exports_json" | "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin), indent=2))'
mapfile -t export_uris < <(printf '%s' "$exports_json" \
  | "$PYTHON" -c 'import json, sys; [print(e["uri"]) for e in json.load(sys.stdin) if e.get("uri")]')
((${#export_uris[@]})) || die "status.exports lists no artifact uri"
start_port_forward
for uri in "${export_uris[@]}"; do
  log "manifest of $uri"
  s3 manifest "$uri"
done
stop_port_forward

kubectl -n "$NAMESPACE" get finetunejob "$JOB_NAME"
log "FineTuneJob $JOB_NAME Succeeded"
