#!/usr/bin/env bash
# Start a Docker engine on a build machine that has none (CI here): never run on a user's machine.
#
# .ci/run calls this only when `docker info` gets no answer. A machine whose engine answers is left
# exactly as it is, and the script says so. Otherwise it:
#   1. installs Debian's docker.io (engine 20.10) with apt-get;
#   2. builds hack/runc-fit (an OCI runtime wrapper: see its main.go) into /usr/local/libexec/edgetune/,
#      because this machine's capability bounding set lacks CAP_SYS_RESOURCE and `docker run
#      --privileged` (kind's nodes) otherwise fails with "unable to apply caps";
#   3. writes /etc/docker/daemon.json registering runc-fit as the default runtime (an existing
#      daemon.json is kept as daemon.json.edgetune-backup);
#   4. starts dockerd in the background (log: /var/log/edgetune-dockerd.log) and waits for it.
# Every change is printed as it is made.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIBEXEC=/usr/local/libexec/edgetune
DAEMON_JSON=/etc/docker/daemon.json
LOG=/var/log/edgetune-dockerd.log

say() { echo "docker-engine: $*" >&2; }

if docker info > /dev/null 2>&1; then
  say "a Docker engine answers: nothing changed"
  exit 0
fi
[[ $(id -u) == 0 ]] || { say "no engine answers, and starting one needs root"; exit 1; }

if ! command -v dockerd > /dev/null; then
  say "installing Debian's docker.io with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io > /dev/null
fi

command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
say "building runc-fit into $LIBEXEC/runc-fit"
mkdir -p "$LIBEXEC"
(cd "$HACK_DIR/runc-fit" && CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=readonly go build -trimpath -o "$LIBEXEC/runc-fit" .)

runc_path=$(command -v runc)
mkdir -p "$(dirname "$DAEMON_JSON")"
if [[ -f $DAEMON_JSON && ! -f $DAEMON_JSON.edgetune-backup ]]; then
  cp "$DAEMON_JSON" "$DAEMON_JSON.edgetune-backup"
  say "kept the existing $DAEMON_JSON as $DAEMON_JSON.edgetune-backup"
fi
cat > "$DAEMON_JSON" << JSON
{
  "runtimes": {"runc-fit": {"path": "$LIBEXEC/runc-fit", "runtimeArgs": []}},
  "default-runtime": "runc-fit",
  "storage-driver": "overlay2",
  "oom-score-adjust": 0
}
JSON
say "wrote $DAEMON_JSON: default runtime runc-fit (execs $runc_path)"

say "starting dockerd (log: $LOG)"
RUNC_FIT_RUNTIME=$runc_path nohup dockerd > "$LOG" 2>&1 &
for _ in $(seq 60); do
  if docker info > /dev/null 2>&1; then
    say "engine $(docker version --format '{{.Server.Version}}') answers"
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within 60 s; the end of its log:"
tail -20 "$LOG" >&2
exit 1
