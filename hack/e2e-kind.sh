#!/usr/bin/env bash
# End to end on kind, the user's path asserted at each step: a kind cluster from kind-config.yaml, KubeRay's
# real Helm chart, `helm install charts/edgetune` (MinIO on), `kubectl apply -f examples/quickstart-kind.yaml`,
# Ray head and workers as pods on the training pool training with DDP over the pod network, checkpoints in
# MinIO, progress in `kubectl get ftj`, the export Job on the edge node, phase Succeeded with its exports,
# and metrics scraped from the operator and a worker while it trains, and by a Prometheus in the cluster
# through what the chart's monitors select (its series of the job, the alert rules evaluated). Then faults on
# real pods (a Ray worker pod, the operator pod, MinIO's pod for a minute), each with what it cost.
#
#   hack/e2e-kind.sh          (make e2e; needs a Docker engine; kind, helm and kubectl are fetched if absent)
#
# Images: every image is used under its official name. One that is not in the local engine is pulled; where
# no registry answers, hack/images/ builds it here (see hack/images/lib.sh). edgetune's own images are built
# from operator/Dockerfile and trainer/Dockerfile, each rebuilt only when its inputs change.
#
# Environment:
#   CLUSTER            kind cluster name (edgetune-e2e)
#   KEEP_CLUSTER       1: keep the cluster (and its kubeconfig) after the run
#   NAMESPACE          namespace of the FineTuneJobs, watched by the operator (default)
#   RELEASE_NS         namespace of the edgetune release and MinIO (edgetune-system)
#   KIND_NODE_IMAGE    node image (kindest/node:v1.35.4: the Kubernetes of the project's tools and tests)
#   KUBERAY_VERSION    KubeRay operator version (1.6.2)
#   KUBERAY_CHART      KubeRay's chart: a folder, or empty for the kuberay Helm repository at KUBERAY_VERSION
#                      (default: shared/kuberay/v1.6.2/chart/kuberay-operator in the folder above the checkout,
#                      or the one above that, when it exists)
#   E2E_TIMEOUT        seconds for the whole run, image builds included, before it fails naming its step (3600)
#   E2E_FAULTS         0: skip the fault phase (1)
#   E2E_MINILM         0: skip the pretrained MiniLM job (examples/minilm-sentiment-kind.yaml) (1)
#   JOB_TIMEOUT        seconds to wait for each FineTuneJob to succeed (900)
#   TORCH_INDEX_URL    extra pip index for torch in the trainer image (empty: PyPI)
#   PYTHON             a Python with boto3, for the MinIO upload (default: .venv/bin/python, then python3)
#   MINIO_LOCAL_PORT   local port for `kubectl port-forward` to MinIO (19000)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
user_kuberay_version=${KUBERAY_VERSION:-}
source hack/images/versions.sh
KUBERAY_VERSION=${user_kuberay_version:-$KUBERAY_VERSION}
KUBERAY_VERSION=v${KUBERAY_VERSION#v}   # 1.6.2 or v1.6.2: the image tag has the v, the chart version not

CLUSTER=${CLUSTER:-edgetune-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
NAMESPACE=${NAMESPACE:-default}
RELEASE_NS=${RELEASE_NS:-edgetune-system}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:$K8S_VERSION}
if [[ -z ${KUBERAY_CHART+set} ]]; then
  # The project's shared data sits next to a checkout (../shared), or next to a folder of checkouts.
  KUBERAY_CHART=
  for dir in "$ROOT/.." "$ROOT/../.."; do
    chart=$dir/shared/kuberay/v${KUBERAY_VERSION#v}/chart/kuberay-operator
    if [[ -f $chart/Chart.yaml ]]; then
      KUBERAY_CHART=$(cd "$chart" && pwd)
      break
    fi
  done
fi
E2E_TIMEOUT=${E2E_TIMEOUT:-3600}
E2E_FAULTS=${E2E_FAULTS:-1}
E2E_MINILM=${E2E_MINILM:-1}
JOB_TIMEOUT=${JOB_TIMEOUT:-900}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
MINIO_LOCAL_PORT=${MINIO_LOCAL_PORT:-19000}

PROMETHEUS_IMAGE=$(sed -n 's/^ *image: *\(quay\.io\/prometheus\/prometheus:.*\)$/\1/p' hack/e2e-prometheus.yaml)
JOB_FILE=examples/quickstart-kind.yaml
JOB_NAME=quickstart-kind   # metadata.name of $JOB_FILE
MINILM_FILE=examples/minilm-sentiment-kind.yaml
MINILM_JOB=minilm-sentiment-kind   # metadata.name of $MINILM_FILE
FAULT_JOB=quickstart-kind-faults
OPERATOR_IMAGE=edgetune/operator:e2e
TRAINER_IMAGE=edgetune/trainer:e2e
REGISTRY_NAME=kind-registry   # kind's documented local registry container
REGISTRY_PORT=5001
TRAINER_IN_REGISTRY=localhost:$REGISTRY_PORT/edgetune/trainer:e2e
MINIO_SERVICE=edgetune-minio
MINIO_SECRET=edgetune-minio
BUCKET=edgetune
PREFIX=quickstart

# Our own kubeconfig: the run never touches ~/.kube/config or the current context.
WORK_DIR=$ROOT/.edgetune/e2e
mkdir -p "$WORK_DIR"
export KUBECONFIG=$WORK_DIR/kubeconfig-$CLUSTER

STEP=starting
STEP_START=$SECONDS
TIMINGS=()
log() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'e2e-kind: %s\n' "$*" >&2
  exit 1
}
step() {  # step NAME: close the previous step's timing and start this one
  [[ $STEP == starting ]] || TIMINGS+=("$(printf '%5d s  %s' $((SECONDS - STEP_START)) "$STEP")")
  STEP=$1
  STEP_START=$SECONDS
  log "$STEP"
}

# --- prerequisites, all checked before anything is created -----------------------------------------

command -v docker > /dev/null || die "'docker' is not on PATH: install Docker (https://docs.docker.com/engine/install/)"
if ! docker_error=$(docker info 2>&1 > /dev/null); then
  die "the Docker engine is not reachable ('docker info' failed): start the daemon or set DOCKER_HOST.
${docker_error}"
fi
command -v kind > /dev/null || PATH=$(hack/fetch-kind.sh | tail -1):$PATH
command -v helm > /dev/null && command -v kubectl > /dev/null || PATH=$(hack/fetch-helm.sh | tail -1):$PATH
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c "import boto3" 2> /dev/null \
  || die "'$PYTHON' cannot import boto3 (needed to upload the quickstart to MinIO): run 'make setup' or set PYTHON"
[[ -d examples/quickstart/tiny-bert && -f examples/quickstart/reviews.jsonl ]] \
  || die "examples/quickstart/ is incomplete (tiny-bert/ and reviews.jsonl)"
[[ -z $KUBERAY_CHART || -f $KUBERAY_CHART/Chart.yaml ]] || die "KUBERAY_CHART=$KUBERAY_CHART holds no Chart.yaml"

# The whole run has a deadline of its own, well inside CI's: past it, the run fails naming its step.
# Its `sleep` must not outlive the run: it holds no output stream (a caller reading the run's output to its
# end, as tests/e2e does, would otherwise wait for it), and the watchdog kills it when stopped.
(
  sleep "$E2E_TIMEOUT" > /dev/null 2>&1 &
  sleeper=$!
  trap 'kill "$sleeper" 2> /dev/null; exit 0' TERM
  wait "$sleeper"
  echo "e2e-kind: the run passed its ${E2E_TIMEOUT} s limit (E2E_TIMEOUT)" >&2
  kill -TERM $$
) 2> /dev/null &
WATCHDOG=$!

# --- teardown ------------------------------------------------------------------------------------

CREATED_CLUSTER=0
CLUSTER_UP=0
PORT_FORWARDS=()

stop_port_forwards() {
  local pid
  for pid in "${PORT_FORWARDS[@]}"; do
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
  PORT_FORWARDS=()
}

wait_for_nodes() {  # wait_for_nodes SECONDS: every node of the kind cluster registered and Ready
  local expected ready deadline=$((SECONDS + $1))
  expected=$(kind get nodes --name "$CLUSTER" | wc -l)
  while :; do
    ready=$(kubectl get nodes --no-headers \
      -o custom-columns='R:.status.conditions[?(@.type=="Ready")].status' 2> /dev/null | grep -cx True || true)
    ((ready == expected)) && return 0
    ((SECONDS < deadline)) || die "$ready of $expected nodes Ready after $1 s"
    sleep 5
  done
}

diagnostics() {
  set +e
  log "diagnostics"
  kubectl -n "$NAMESPACE" get finetunejobs -o yaml
  kubectl get rayjobs,rayclusters,jobs -A -o wide
  kubectl -n "$NAMESPACE" describe rayjobs
  kubectl get nodes -o wide --show-labels
  kubectl get pods -A -o wide
  echo "--- kube-system pods that restarted: their previous logs"
  kubectl -n kube-system get pods --no-headers \
    -o custom-columns='N:.metadata.name,R:.status.containerStatuses[*].restartCount' 2> /dev/null \
    | awk '$2 != "0" && $2 != "<none>" {print $1}' | while read -r pod; do
      echo "--- logs kube-system/$pod (previous)"
      kubectl -n kube-system logs "$pod" --all-containers --previous --tail=40
    done
  kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp | tail -60
  kubectl -n "$RELEASE_NS" get events --sort-by=.lastTimestamp | tail -30
  local pod
  for pod in $(kubectl -n "$RELEASE_NS" get pods -o name); do
    echo "--- logs $RELEASE_NS/$pod"
    kubectl -n "$RELEASE_NS" logs "$pod" --all-containers --tail=200
  done
  for pod in $(kubectl -n "$NAMESPACE" get pods -o name); do
    echo "--- logs $NAMESPACE/$pod"
    kubectl -n "$NAMESPACE" logs "$pod" --all-containers --tail=150
  done
  echo "--- logs KubeRay operator"
  kubectl -n kuberay-system logs deploy/kuberay-operator --tail=150
  set -e
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  kill "$WATCHDOG" 2> /dev/null
  stop_port_forwards
  if ((rc != 0)); then
    echo "e2e-kind: failed during: $STEP" >&2
    ((CLUSTER_UP)) && diagnostics
  fi
  if ((CREATED_CLUSTER)) && [[ $KEEP_CLUSTER != 1 ]]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" > /dev/null 2>&1
    rm -f "$KUBECONFIG"
  elif ((CLUSTER_UP)); then
    log "cluster $CLUSTER kept: export KUBECONFIG=$KUBECONFIG   (kind delete cluster --name $CLUSTER)"
  fi
  step done
  printf '\ntimings:\n'
  printf '  %s\n' "${TIMINGS[@]}"
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

# --- 1. images ----------------------------------------------------------------------------------

step "images: official names, present, pulled or built here (hack/images)"
hack/images/ensure-images.sh
source hack/images/lib.sh
CA_CERTS=$(extra_ca_certs)
build_own() {  # build_own IMAGE DOCKERFILE PATH...: rebuilt only when one of the paths changed
  local image=$1 dockerfile=$2 key
  shift 2
  key=$(tree_key "$@")-$(content_key "$dockerfile" "$TORCH_INDEX_URL" \
    "$(image_id docker.io/library/python:3.11-slim)" "$(image_id docker.io/rayproject/ray:2.59.0-py311)")
  if [[ $(image_label "$image") == "$key" ]]; then
    images_log "$image: built earlier from the same sources ($key)"
    return 0
  fi
  images_log "$image: building from $dockerfile ($key)"
  local previous
  previous=$(image_id "$image" 2> /dev/null || true)
  docker_build "$image" "$key" "$dockerfile" . --build-arg EXTRA_CA_CERTS="$CA_CERTS" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
    --build-arg REVISION="$(git rev-parse HEAD 2> /dev/null || echo unknown)"
  # The build this one replaces (GBs for the trainer), unless another tag or a container still uses it.
  if [[ -n $previous && $previous != "$(image_id "$image")" ]]; then
    docker rmi "$previous" > /dev/null 2>&1 || true
  fi
}
build_own "$OPERATOR_IMAGE" operator/Dockerfile "$ROOT/operator" "$ROOT/trainer/edgetune_trainer" \
  "$ROOT/pyproject.toml" "$ROOT/constraints.txt"
build_own "$TRAINER_IMAGE" trainer/Dockerfile "$ROOT/operator" "$ROOT/trainer" "$ROOT/pyproject.toml" \
  "$ROOT/constraints.txt" "$ROOT/models.txt"
docker images --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' "$TRAINER_IMAGE"

# Disk, checked before anything is created. kind's nodes share nothing: each worker node unpacks the 7 GB
# trainer image into its own containerd (about 9.3 GB per node with the other images, measured), and a pull
# holds its compressed download until the layer is unpacked. A full run here took 33.1 GB of free space at
# its lowest point, about 4.5 times the trainer image. Short of that, a node's containerd or etcd dies
# half-way with "no space left on device", minutes in and far from the cause.
docker_root=$(docker info -f '{{.DockerRootDir}}')
trainer_bytes=$(docker image inspect -f '{{.Size}}' "$TRAINER_IMAGE")
need_gb=$((trainer_bytes * 9 / 2 / 1000000000 + 1))
free_gb=$(($(df -Pk "$docker_root" | awk 'NR == 2 {print $4}') * 1024 / 1000000000))
echo "disk: $free_gb GB free where Docker keeps its data ($docker_root); the run needs about $need_gb GB"
((free_gb >= need_gb)) || die "$free_gb GB free on $docker_root, and the run needs about $need_gb GB: each of \
kind's worker nodes unpacks the $((trainer_bytes / 1000000000)) GB trainer image for itself. Free some space (old kind \
clusters: kind get clusters; unused images: docker image prune) and run again."

# --- 2. cluster ---------------------------------------------------------------------------------

step "kind cluster $CLUSTER from kind-config.yaml ($KIND_NODE_IMAGE)"
if kind get clusters 2> /dev/null | grep -qx "$CLUSTER"; then
  echo "reusing the existing cluster (it is kept afterwards)"
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  CREATED_CLUSTER=1
  kind create cluster --config kind-config.yaml --name "$CLUSTER" --kubeconfig "$KUBECONFIG" \
    --image "$KIND_NODE_IMAGE" --wait 300s
fi
CLUSTER_UP=1
# `kind create --wait` waits for the control plane only: a worker can still be joining (its kubelet
# registering, its CNI config not written) when it returns, and on a loaded 2-core machine that took over a
# minute once. Every node kind made must be registered and Ready before anything is scheduled or labelled.
wait_for_nodes 300
kubectl get nodes -L edgetune.dev/pool -L edgetune.dev/edge

step "NetworkPolicy enforcement: kube-router's policy controller (hack/kube-router-netpol.yaml)"
# The jobs' NetworkPolicies are on (the chart's default), and the isolation probe below needs them enforced.
# kindnetd of kind's own release images enforces policies itself; the kind node built here from source
# carries a stand-in kindnetd that only wires pods, so kube-router filters instead, on every node.
kind load docker-image docker.io/cloudnativelabs/kube-router:v2.1.0 --name "$CLUSTER"
kubectl apply -f hack/kube-router-netpol.yaml > /dev/null
kubectl -n kube-system rollout status daemonset/kube-router --timeout=180s
train_nodes=$(kubectl get nodes -l edgetune.dev/pool=train -o jsonpath='{.items[*].metadata.name}')
edge_nodes=$(kubectl get nodes -l edgetune.dev/edge=true -o jsonpath='{.items[*].metadata.name}')
[[ -n $train_nodes ]] || die "no node labelled edgetune.dev/pool=train"
[[ -n $edge_nodes ]] || die "no node labelled edgetune.dev/edge=true"

step "images into the cluster"
# The e2e's Prometheus runs on the control-plane node (hack/e2e-prometheus.yaml), off the training pool.
kind load docker-image "$PROMETHEUS_IMAGE" --name "$CLUSTER" --nodes "$CLUSTER-control-plane"
# The operator, KubeRay and MinIO (and the probe pod, from the operator image) run on the untainted training
# nodes only: the tainted edge node runs export Jobs and DaemonSets, and its disk goes to the trainer image.
for image in "$OPERATOR_IMAGE" "quay.io/kuberay/operator:$KUBERAY_VERSION" \
  "$(sed -n 's/^ *tag: *\(RELEASE\..*\)$/quay.io\/minio\/minio:\1/p' charts/edgetune/values.yaml)"; do
  kind load docker-image "$image" --name "$CLUSTER" --nodes "$(tr ' ' ',' <<< "$train_nodes")"
done
# The trainer image (GBs) goes through kind's documented local registry: pushed once (compressed; layers
# already there are skipped), pulled by the nodes that run training and export, which keep only the
# unpacked layers. `kind load` would keep an uncompressed copy and its unpacked layers on every node.
if [[ $(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2> /dev/null) != true ]]; then
  docker rm -f "$REGISTRY_NAME" > /dev/null 2>&1 || true
  docker run -d --restart=always -p "127.0.0.1:$REGISTRY_PORT:5000" -v "$REGISTRY_NAME:/var/lib/registry" \
    --name "$REGISTRY_NAME" docker.io/library/registry:3 > /dev/null
fi
docker network connect kind "$REGISTRY_NAME" 2> /dev/null || true
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" sh -c "mkdir -p /etc/containerd/certs.d/localhost:$REGISTRY_PORT && printf '[host.\"http://$REGISTRY_NAME:5000\"]\\n' > /etc/containerd/certs.d/localhost:$REGISTRY_PORT/hosts.toml"
done
pushed_before=$(image_id "$TRAINER_IN_REGISTRY" 2> /dev/null || true)
docker tag "$TRAINER_IMAGE" "$TRAINER_IN_REGISTRY"
if [[ -n $pushed_before && $pushed_before != "$(image_id "$TRAINER_IMAGE")" ]]; then
  docker rmi "$pushed_before" > /dev/null 2>&1 || true  # the trainer build this one replaced (GBs)
fi
docker push -q "$TRAINER_IN_REGISTRY"
# The registry's volume outlives the run: drop the layers of trainer images no tag names any more.
docker exec "$REGISTRY_NAME" registry garbage-collect --delete-untagged /etc/distribution/config.yml \
  > "$WORK_DIR/registry-gc.log" 2>&1 || echo "registry garbage-collect failed (kept going): $WORK_DIR/registry-gc.log"

# --- 3. KubeRay and edgetune ------------------------------------------------------------------------

step "KubeRay operator $KUBERAY_VERSION (Helm: ${KUBERAY_CHART:-the kuberay repository})"
if [[ -n $KUBERAY_CHART ]]; then
  kuberay_chart=("$KUBERAY_CHART")
else
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update > /dev/null
  kuberay_chart=(kuberay/kuberay-operator --version "${KUBERAY_VERSION#v}")
fi
helm upgrade --install kuberay-operator "${kuberay_chart[@]}" -n kuberay-system --create-namespace \
  --set image.pullPolicy=IfNotPresent --wait --timeout 5m

step "edgetune (charts/edgetune, MinIO on, watching $NAMESPACE)"
# Both namespaces enforce the restricted Pod Security profile: the chart's pods, and every pod KubeRay and
# the Job controller make from what the operator renders, are admitted under it or never run.
for ns in "$RELEASE_NS" "$NAMESPACE"; do
  kubectl get namespace "$ns" > /dev/null 2>&1 || kubectl create namespace "$ns" > /dev/null
  kubectl label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest > /dev/null
done
helm upgrade --install edgetune charts/edgetune -n "$RELEASE_NS" --create-namespace \
  --set image.repository=edgetune/operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set trainer.image.repository="${TRAINER_IN_REGISTRY%:*}" --set trainer.image.tag=e2e \
  --set minio.enabled=true --set "watch.namespaces={$NAMESPACE}" \
  --wait --timeout 5m
kubectl get crd finetunejobs.edgetune.dev > /dev/null

step "Prometheus in the cluster, scraping what the chart's monitors select (hack/e2e-prometheus.py)"
# No Prometheus Operator here: the chart's ServiceMonitor, PodMonitor and PrometheusRule, rendered with the
# release's values, become a plain Prometheus's scrape jobs and rule file, relabelled as the operator would.
# Scraped every 5 s (the monitors' interval values): the quickstart trains for well under a minute here.
helm template edgetune charts/edgetune -n "$RELEASE_NS" --set minio.enabled=true --set "watch.namespaces={$NAMESPACE}" \
  --set metrics.podMonitor.interval=5s --set metrics.serviceMonitor.interval=5s \
  --api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PodMonitor \
  --api-versions monitoring.coreos.com/v1/PrometheusRule --show-only templates/servicemonitor.yaml \
  --show-only templates/podmonitor.yaml --show-only templates/prometheusrule.yaml \
  | "$PYTHON" hack/e2e-prometheus.py config e2e-monitoring > "$WORK_DIR/prometheus-config.yaml"
kept_prometheus=$(kubectl -n e2e-monitoring get deploy prometheus -o name 2> /dev/null || true)
kubectl apply -f hack/e2e-prometheus.yaml > /dev/null
kubectl apply -f "$WORK_DIR/prometheus-config.yaml" > /dev/null
if [[ -n $kept_prometheus ]]; then  # a kept cluster: start afresh, on this run's config
  kubectl -n e2e-monitoring rollout restart deploy/prometheus > /dev/null
fi
kubectl -n e2e-monitoring rollout status deploy/prometheus --timeout=180s

# --- 4. the quickstart's model and data into MinIO -----------------------------------------------------

MINIO_SECRET_JSON=$(kubectl -n "$NAMESPACE" get secret "$MINIO_SECRET" -o json) \
  || die "Secret $MINIO_SECRET not found in $NAMESPACE: the chart copies it into every watched namespace"
export MINIO_SECRET_JSON

port_forward() {  # port_forward NAMESPACE TARGET LOCAL:REMOTE
  kubectl -n "$1" port-forward "$2" "$3" > "$WORK_DIR/port-forward-${3%%:*}.log" 2>&1 &
  PORT_FORWARDS+=($!)
}

# s3 ACTION [ARGS]: boto3 against MinIO through a port-forward, credentials from the Secret.
s3() {
  MINIO_ENDPOINT=http://127.0.0.1:$MINIO_LOCAL_PORT "$PYTHON" hack/e2e-s3.py "$@"
}

step "quickstart model and data to s3://$BUCKET/$PREFIX/"
port_forward "$RELEASE_NS" "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000"
s3 upload "$BUCKET" "$PREFIX" examples/quickstart
# On a kept cluster the jobs' checkpoints from the run before are still there, and a job of the same name
# resumes from them (as it should): each run here starts its jobs from step 0.
s3 forget "$BUCKET" "jobs/$NAMESPACE/$JOB_NAME" "jobs/$NAMESPACE/$MINILM_JOB" "jobs/$NAMESPACE/$FAULT_JOB"
stop_port_forwards

# --- 5. the quickstart FineTuneJob, as a user runs it ---------------------------------------------------

# wait_for_phase JOB PHASE [on_progress]: print every change of `kubectl get ftj`; fail on Failed or timeout.
wait_for_phase() {
  local job=$1 want=$2 hook=${3:-} deadline=$((SECONDS + JOB_TIMEOUT)) last= line phase
  while :; do
    # Every column of `kubectl get ftj` but AGE, which would make every poll a change.
    line=$(kubectl -n "$NAMESPACE" get ftj "$job" --no-headers 2> /dev/null | sed -E 's/ +[0-9]+[smhd][0-9smhd]*$//' || true)
    phase=$(kubectl -n "$NAMESPACE" get ftj "$job" -o jsonpath='{.status.phase}' 2> /dev/null || true)
    if [[ $line != "$last" ]]; then
      printf '  [%4ds] %s\n' "$((SECONDS - STEP_START))" "$line"
      last=$line
    fi
    [[ $phase == "$want" ]] && return 0
    [[ $phase == Failed ]] && die "FineTuneJob $job failed"
    ((SECONDS < deadline)) || die "FineTuneJob $job did not reach $want within ${JOB_TIMEOUT}s (phase: ${phase:-none})"
    [[ -z $hook ]] || "$hook" "$job"
    sleep 2
  done
}

progress_step() { kubectl -n "$NAMESPACE" get ftj "$1" -o jsonpath='{.status.progress.step}' 2> /dev/null || true; }
checkpoint_step() {  # the step of status.latestCheckpoint (.../checkpoint_000000020-run), or 0
  local uri
  uri=$(kubectl -n "$NAMESPACE" get ftj "$1" -o jsonpath='{.status.latestCheckpoint}' 2> /dev/null || true)
  [[ $uri =~ checkpoint_0*([0-9]+)- ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

SCRAPED=0
scrape_metrics() {  # once, while the job trains: the operator's /metrics and rank 0's (one of the workers)
  local job=$1 workers worker op port=18081 found=
  ((SCRAPED)) && return 0
  [[ $(kubectl -n "$NAMESPACE" get ftj "$job" -o jsonpath='{.status.phase}') == Running ]] || return 0
  [[ -n $(progress_step "$job") ]] || return 0
  workers=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$job,ray.io/node-type=worker" \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}' 2> /dev/null || true)
  [[ -n $workers ]] || return 0
  port_forward "$RELEASE_NS" svc/edgetune-operator-metrics 18080:8080
  for worker in $workers; do
    port_forward "$NAMESPACE" "pod/$worker" "$port:8090"
    port=$((port + 1))
  done
  sleep 3
  op=$(curl -fsS http://127.0.0.1:18080/metrics || true)
  grep -E "^edgetune_jobs\{namespace=\"$NAMESPACE\",phase=\"Running\"\} [1-9]" <<< "$op" \
    || die "the operator's /metrics shows no Running job"
  echo "  operator /metrics: $(grep -c '^edgetune_' <<< "$op") edgetune_ samples"
  port=18081
  for worker in $workers; do  # rank 0 serves the training series; the other ranks' pods serve none
    curl -fsS "http://127.0.0.1:$port/metrics" > "$WORK_DIR/worker-metrics.txt" 2> /dev/null || true
    if grep -q "job=\"$job\"" "$WORK_DIR/worker-metrics.txt"; then
      echo "  $worker /metrics (rank 0): $(grep -E '^edgetune_train_(step|loss)' "$WORK_DIR/worker-metrics.txt" | tr '\n' ' ')"
      found=1
    fi
    port=$((port + 1))
  done
  stop_port_forwards
  [[ -n $found ]] || die "no worker pod's /metrics shows $job (rank 0 serves edgetune_train_*)"
  SCRAPED=1
}

# From a pod in another namespace, while the job trains: the head's Ray ports (GCS, dashboard, client) must
# not answer, while the same pod reaches MinIO and the workers' metrics ports (which the job's NetworkPolicy
# opens to scrapers): the network path works, and only the policy keeps Ray out of reach. The probe pod
# starts before the job: an enforcer admits a new source pod only once it has synced its IP into its sets
# (seconds), so a pod made at probe time can be refused everywhere and prove nothing.
PROBED=0
OUTSIDER_NS=e2e-outsider
start_outsider() {
  kubectl create namespace "$OUTSIDER_NS" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
  kubectl -n "$OUTSIDER_NS" apply -f - > /dev/null << EOF
apiVersion: v1
kind: Pod
metadata:
  name: outsider
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
    - name: probe
      image: $OPERATOR_IMAGE
      imagePullPolicy: Never
      command: [sleep, "3600"]
EOF
  kubectl -n "$OUTSIDER_NS" wait --for=condition=Ready pod/outsider --timeout=120s > /dev/null
}
probe_from_outsider() {  # probe_from_outsider NAME=HOST:PORT...: one line per target, "NAME open|closed: why"
  kubectl -n "$OUTSIDER_NS" exec outsider -- python -c '
import socket, sys
for target in sys.argv[1:]:
    name, address = target.split("=")
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        print(name, "open")
    except OSError as err:
        print(name, "closed:", err)
' "$@" 2>&1
}
probe_isolation() {
  local job=$1 head worker minio out attempt port
  ((PROBED)) && return 0
  [[ $(kubectl -n "$NAMESPACE" get ftj "$job" -o jsonpath='{.status.phase}') == Running ]] || return 0
  [[ -n $(progress_step "$job") ]] || return 0
  head=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$job,ray.io/node-type=head" \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].status.podIP}' 2> /dev/null || true)
  worker=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$job,ray.io/node-type=worker" \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].status.podIP}' 2> /dev/null || true)
  minio=$(kubectl -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=minio \
    -o jsonpath='{.items[0].status.podIP}' 2> /dev/null || true)
  [[ -n $head && -n $worker && -n $minio ]] || return 0
  for attempt in 1 2 3 4 5 6; do
    out=$(probe_from_outsider "minio=$minio:9000" "worker-metrics=$worker:8080" "head-gcs=$head:6379" \
      "head-dashboard=$head:8265" "head-client=$head:10001") || die "the probe in $OUTSIDER_NS/outsider failed: $out"
    for port in head-gcs head-dashboard head-client; do
      grep -q "^$port closed" <<< "$out" || die "a pod in another namespace reached the job's $port port: $out"
    done
    grep -q '^minio open' <<< "$out" && grep -q '^worker-metrics open' <<< "$out" && break
    ((attempt < 6)) || die "the probe never reached MinIO and a worker's metrics port (which the policy opens): $out"
    sleep 5  # the worker pod can be newer than the enforcer's last sync
  done
  echo "$out" | sed 's/^/  isolation probe from namespace '"$OUTSIDER_NS"': /'
  kubectl delete namespace "$OUTSIDER_NS" --wait=false > /dev/null
  PROBED=1
}
# The probe first: a job that has not been probed fails the run, one that has not been scraped does not.
while_training() { probe_isolation "$1" && scrape_metrics "$1"; }

step "kubectl apply -f $JOB_FILE (namespace $NAMESPACE)"
kubectl -n "$NAMESPACE" delete ftj "$JOB_NAME" --ignore-not-found --wait=true
start_outsider
kubectl -n "$NAMESPACE" apply -f "$JOB_FILE"
wait_for_phase "$JOB_NAME" Succeeded while_training
((SCRAPED)) || echo "  (the job finished before a scrape could catch it Running)"
((PROBED)) || die "the job finished before the isolation probe could catch it Running"

step "assertions on the finished quickstart"
pods=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$JOB_NAME" \
  -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.labels.ray\.io/node-type}{"\n"}{end}')
echo "$pods"
while read -r pod node kind; do
  [[ -n $pod ]] || continue
  case $pod in
    *-export-*) [[ " $edge_nodes " == *" $node "* ]] || die "export pod $pod ran on $node, not an edge node" ;;
    *) if [[ $kind == head || $kind == worker ]]; then
         [[ " $train_nodes " == *" $node "* ]] || die "Ray $kind pod $pod ran on $node, not the training pool"
       fi ;;
  esac
done <<< "$pods"
exports=$(kubectl -n "$NAMESPACE" get ftj "$JOB_NAME" -o jsonpath='{.status.exports}')
echo "$exports" | "$PYTHON" -m json.tool
port_forward "$RELEASE_NS" "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000"
s3 checkpoints "$BUCKET" "jobs/$NAMESPACE/$JOB_NAME/checkpoints"
mapfile -t export_uris < <(echo "$exports" | "$PYTHON" -c 'import json, sys; [print(e["uri"]) for e in json.load(sys.stdin) if e.get("uri")]')
((${#export_uris[@]})) || die "status.exports lists no artifact uri"
for uri in "${export_uris[@]}"; do
  s3 manifest "$uri"
done
stop_port_forwards
kubectl -n "$NAMESPACE" get ftj "$JOB_NAME"
echo "FineTuneJob $JOB_NAME Succeeded"

step "Prometheus: the quickstart's series, scraped in the cluster, and the alert rules evaluated"
"$PYTHON" hack/e2e-prometheus.py check e2e-monitoring "$NAMESPACE" "$JOB_NAME" \
  || die "the in-cluster Prometheus is missing series of $JOB_NAME (above)"

# --- 5b. a pretrained model: hf:// loaded from the trainer image's Hugging Face cache, no hub -------------

if [[ $E2E_MINILM == 1 ]]; then
  step "pretrained MiniLM: data to s3://$BUCKET/minilm/, kubectl apply -f $MINILM_FILE (1 epoch)"
  port_forward "$RELEASE_NS" "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000"
  s3 upload "$BUCKET" minilm examples/minilm
  stop_port_forwards
  # One epoch instead of the example's three: 0.80 held-out accuracy after it (0.82 after three, measured
  # with `edgetune run`), well clear of random weights' 0.5, for a third of the training time.
  "$PYTHON" - "$MINILM_FILE" > "$WORK_DIR/$MINILM_JOB.yaml" << 'PY'
import sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
job["spec"]["training"]["epochs"] = 1
print(yaml.safe_dump(job, sort_keys=False))
PY
  kubectl -n "$NAMESPACE" delete ftj "$MINILM_JOB" --ignore-not-found --wait=true
  kubectl -n "$NAMESPACE" apply -f "$WORK_DIR/$MINILM_JOB.yaml"
  wait_for_phase "$MINILM_JOB" Succeeded
  accuracy=$(kubectl -n "$NAMESPACE" get ftj "$MINILM_JOB" -o jsonpath='{.status.progress.evalMetric}')
  # Random weights score about 0.5 on these held-out reviews (docs/pretrained.md); pretrained ones above 0.75.
  "$PYTHON" -c "import sys; a = float(sys.argv[1]); sys.exit(0 if a >= 0.7 else f'held-out accuracy {a} < 0.7')" \
    "$accuracy" || die "$MINILM_JOB: the pretrained model did not learn (held-out accuracy $accuracy)"
  kubectl -n "$NAMESPACE" get ftj "$MINILM_JOB" -o jsonpath='{.status.exports}' | "$PYTHON" -m json.tool
  echo "FineTuneJob $MINILM_JOB Succeeded: held-out accuracy $accuracy"
  kubectl -n "$NAMESPACE" delete ftj "$MINILM_JOB" --wait=true  # frees the training pool for the faults
fi

# --- 6. faults on real pods -------------------------------------------------------------------------

if [[ $E2E_FAULTS == 1 ]]; then
  step "faults: a longer run of the same job ($FAULT_JOB)"
  "$PYTHON" - "$JOB_FILE" "$FAULT_JOB" > "$WORK_DIR/$FAULT_JOB.yaml" << 'PY'
import sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
job["metadata"]["name"] = sys.argv[2]
# Three workers on the two training nodes: one node always holds two of them, which a drain can then be
# seen to take one at a time. 30 epochs of 3 x 16 samples a step: ~580 steps, time for four faults in turn and
# for the recovery from the last (a 300-step run ended before it: a drained pod trains on through its grace period).
job["spec"]["resources"]["workers"] = 3
job["spec"]["training"]["epochs"] = 30
job["spec"]["export"] = []  # the quickstart run proved the export; here the faults are the point
print(yaml.safe_dump(job, sort_keys=False))
PY
  kubectl -n "$NAMESPACE" delete ftj "$FAULT_JOB" --ignore-not-found --wait=true
  kubectl -n "$NAMESPACE" apply -f "$WORK_DIR/$FAULT_JOB.yaml"
  interval=$(kubectl -n "$NAMESPACE" get ftj "$FAULT_JOB" -o jsonpath='{.spec.checkpoint.everySteps}')

  FAULT=worker
  KILLED_AT=
  fault_hook() {
    local job=$1 s c pod
    s=$(progress_step "$job")
    [[ -n $s ]] || return 0
    case $FAULT in
      worker)
        # Mid-interval after a checkpoint the status already names: the loss must cost the steps since it.
        c=$(checkpoint_step "$job")
        ((c >= interval && s >= c + interval / 2)) || return 0
        pod=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$job,ray.io/node-type=worker" \
          -o jsonpath='{.items[*].metadata.name}' || true)
        pod=${pod%% *}
        [[ -n $pod ]] || return 0
        echo "  fault 1: deleting Ray worker pod $pod at step $s (latest checkpoint: step $c)"
        kubectl -n "$NAMESPACE" delete pod "$pod" --wait=false
        KILLED_AT=$SECONDS KILLED_STEP=$s HIGH=$s LOW=
        FAULT=worker-recovery
        ;;
      worker-recovery)
        # The deleted pod drains for a while (Ray trains on until its node is gone), then Ray Train restarts
        # the worker group once KubeRay's replacement pod joins: progress goes back to the checkpoint it
        # resumed from, then past the highest step before. (Exact steps: the driver's log, below.)
        if [[ -z $LOW ]]; then
          ((s >= HIGH)) && HIGH=$s || LOW=$s
        else
          ((s < LOW)) && LOW=$s
        fi
        if [[ -n $LOW ]] && ((s > HIGH)); then
          echo "  fault 1: training resumed (back to step $LOW) and passed step $HIGH again $((SECONDS - KILLED_AT)) s after the pod was deleted"
          FAULT=operator
        elif [[ -z $LOW ]] && ((SECONDS - KILLED_AT > 90 && s > KILLED_STEP + 3 * interval)); then
          # Resumed from the very step the status last showed: no step went back, training went on.
          echo "  fault 1: training went on past step $s, $((SECONDS - KILLED_AT)) s after the pod was deleted (no rewind shown in status)"
          FAULT=operator
        elif ((SECONDS - KILLED_AT > 300)); then
          die "training did not come back within 300 s of losing a worker"
        fi
        ;;
      operator)
        pod=$(kubectl -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].metadata.name}')
        pod=${pod%% *}
        echo "  fault 2: deleting the operator pod $pod at step $s"
        KILLED_AT=$SECONDS
        kubectl -n "$RELEASE_NS" delete pod "$pod" --wait=true
        kubectl -n "$RELEASE_NS" rollout status deploy -l app.kubernetes.io/component=operator --timeout=120s
        echo "  fault 2 cost: a new operator was ready $((SECONDS - KILLED_AT)) s later; training went on (step $(progress_step "$job"))"
        FAULT=minio
        ;;
      minio)
        echo "  fault 3: MinIO down for 60 s from step $s (scale to 0, then back)"
        KILLED_STEP=$s
        kubectl -n "$RELEASE_NS" scale deploy "$MINIO_SERVICE" --replicas=0
        sleep 60
        kubectl -n "$RELEASE_NS" scale deploy "$MINIO_SERVICE" --replicas=1
        kubectl -n "$RELEASE_NS" rollout status deploy "$MINIO_SERVICE" --timeout=120s
        echo "  fault 3: MinIO back at step $(progress_step "$job")"
        FAULT=drain
        ;;
      drain)
        # kubectl drain of the training node holding two workers, with the other training node cordoned so
        # that an evicted worker has nowhere to go: the budget (at most one of the job's Ray pods down) must
        # hold the second eviction back. Only the job's workers are drained (--pod-selector): the head's loss
        # would end the attempt, and with it the pods the drain waits on.
        c=$(checkpoint_step "$job")
        ((c >= interval)) || return 0
        node=$(kubectl -n "$NAMESPACE" get pods -l "edgetune.dev/job=$job,ray.io/node-type=worker" \
          --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' \
          | sort | uniq -c | sort -rn | awk '$1 >= 2 {print $2; exit}')
        [[ -n $node ]] || return 0
        others=$(tr ' ' '\n' <<< "$train_nodes" | grep -vx "$node" | paste -sd' ' -)
        selector="edgetune.dev/job=$job,ray.io/node-type=worker"
        echo "  fault 4: kubectl drain $node (two of the job's workers) at step $s, with $others cordoned"
        # shellcheck disable=SC2086  # one argument per node
        kubectl cordon $others > /dev/null
        if kubectl drain "$node" --pod-selector="$selector" --ignore-daemonsets --delete-emptydir-data \
          --timeout=30s > "$WORK_DIR/drain.log" 2>&1; then
          die "kubectl drain took every worker off $node: the disruption budget did not hold ($(tail -3 "$WORK_DIR/drain.log"))"
        fi
        grep -q "disruption budget" "$WORK_DIR/drain.log" \
          || die "the drain failed, but not on the budget: $(tail -5 "$WORK_DIR/drain.log")"
        left=$(kubectl -n "$NAMESPACE" get pods -l "$selector" --field-selector="spec.nodeName=$node" -o go-template \
          --template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} {{end}}{{end}}' | wc -w)
        ((left >= 1)) || die "no worker of the job is left on $node: the budget did not hold the drain back"
        echo "  fault 4: the drain was held back: $(grep -m1 -o "Cannot evict pod.*budget" "$WORK_DIR/drain.log")"
        echo "  fault 4: $left of the job's two workers on $node still running after the drain's 30 s"
        # Forced: delete the rest without eviction (what an administrator does when the node must go now), then
        # the maintenance is over and both nodes take pods again. Training must resume from its checkpoint.
        HIGH=$(progress_step "$job") C=$(checkpoint_step "$job") LOW= KILLED_AT=$SECONDS
        kubectl drain "$node" --pod-selector="$selector" --disable-eviction --ignore-daemonsets \
          --delete-emptydir-data --timeout=120s > "$WORK_DIR/drain-forced.log" 2>&1 \
          || die "the forced drain failed: $(tail -5 "$WORK_DIR/drain-forced.log")"
        # shellcheck disable=SC2086
        kubectl uncordon "$node" $others > /dev/null
        echo "  fault 4: forced drain at step $HIGH (latest checkpoint: step $C); nodes uncordoned"
        FAULT=drain-recovery
        ;;
      drain-recovery)
        [[ -z $LOW || $s -lt $LOW ]] && ((s < HIGH)) && LOW=$s
        ((s > HIGH)) || { ((SECONDS - KILLED_AT < 420)) || die "training did not come back within 420 s of the forced drain"; return 0; }
        [[ -z $LOW ]] || ((LOW >= C)) || die "after the forced drain training went back to step $LOW, behind its checkpoint at step $C"
        echo "  fault 4: training resumed (lowest step seen: ${LOW:-none below $HIGH}) and passed step $HIGH $((SECONDS - KILLED_AT)) s after the forced drain"
        FAULT=done
        ;;
    esac
  }
  wait_for_phase "$FAULT_JOB" Succeeded fault_hook
  [[ $FAULT == done ]] || die "the job finished before every fault was injected (reached: $FAULT)"
  # The drivers' logs of every attempt in turn (a drain that ends an attempt resumes in the next one).
  rayjobs=$(kubectl -n "$NAMESPACE" get rayjobs -l "edgetune.dev/job=$FAULT_JOB" \
    -o jsonpath='{range .items[*]}{.metadata.labels.edgetune\.dev/attempt} {.metadata.name}{"\n"}{end}' | sort -n | cut -d' ' -f2)
  echo "  fault costs, from the drivers' logs (KubeRay's submitter Jobs: $(paste -sd' ' - <<< "$rayjobs")):"
  : > "$WORK_DIR/$FAULT_JOB-driver.log"
  for rayjob in $rayjobs; do
    kubectl -n "$NAMESPACE" logs "job/$rayjob" >> "$WORK_DIR/$FAULT_JOB-driver.log"
  done
  if ! "$PYTHON" hack/e2e_cost.py --interval "$interval" < "$WORK_DIR/$FAULT_JOB-driver.log" | sed 's/^/    /'; then
    die "a worker loss cost more than one checkpoint interval, or left no restart in the driver's log"
  fi
  rayjobs=$(kubectl -n "$NAMESPACE" get rayjobs -l "edgetune.dev/job=$FAULT_JOB" -o name | wc -l)
  attempt=$(kubectl -n "$NAMESPACE" get ftj "$FAULT_JOB" -o jsonpath='{.status.attempt}')
  echo "  RayJobs: $rayjobs for $attempt attempt(s)"
  ((rayjobs == attempt)) || die "$rayjobs RayJobs for $attempt attempts: the operator's restart duplicated one"
  port_forward "$RELEASE_NS" "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000"
  s3 checkpoints "$BUCKET" "jobs/$NAMESPACE/$FAULT_JOB/checkpoints"
  stop_port_forwards
fi
