#!/usr/bin/env bash
# The team profile on one machine, real processes (make cluster-up / make cluster-down):
#   - an S3-compatible object store (moto's server) with the buckets seqops-data (data.store,
#     Ray Train's storage_path), seqops-mlflow (MLflow's artifacts) and seqops-dvc (DVC remote);
#   - PostgreSQL (Debian's package) as MLflow's backend store, and an `mlflow server` on it;
#   - a Ray head and a second Ray node that cannot see this repository or /tmp (its own mount
#     namespace, tmpfs over both): code reaches it only through Ray's runtime environment,
#     data only through the object store, metrics only through the MLflow server.
# `up` writes .cluster/env: `source .cluster/env` points the stages, training and serving at
# it (RAY_ADDRESS and Ray's token, MLFLOW_TRACKING_URI, the store's endpoint and keys; pyarrow,
# boto3 and dvc-s3 all take the endpoint from AWS_ENDPOINT_URL, so data.store is a plain
# s3:// URL, the same as on a real cluster: SEQOPS_DATA_STORE). `down` stops
# everything and removes .cluster/. Ports: S3 9500, PostgreSQL 5433, and MLflow 5000 and
# Ray's GCS 6379 as in infra/ (tests/unit/test_manifests.py holds the two to the same
# ports and environment names); SEQOPS_*_PORT move them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=$ROOT/.cluster
VENV=$ROOT/.venv
PG=/usr/lib/postgresql/15/bin
S3_PORT=${SEQOPS_S3_PORT:-9500}
PG_PORT=${SEQOPS_PG_PORT:-5433}
MLFLOW_PORT=${SEQOPS_MLFLOW_PORT:-5000}
RAY_PORT=${SEQOPS_RAY_PORT:-6379}
# CPUs each Ray node offers (logical: both share this machine's cores). One each puts two
# one-CPU training workers on two nodes; benchmarks/cluster.py asks for two, to compare one
# node with two on the same cluster (train.placement_strategy).
NODE_CPUS=${SEQOPS_NODE_CPUS:-1}

log() { echo "cluster: $*" >&2; }

wait_for() {  # wait_for NAME SECONDS COMMAND...: poll until COMMAND succeeds
  local name=$1 seconds=$2; shift 2
  for _ in $(seq 1 "$((seconds * 2))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not come up in ${seconds}s; see $STATE/*.log"; return 1
}

port_open() { "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1"; }

write_env() {
  # Ray's token authentication (RAY_AUTH_MODE=token): one token for this profile, given to
  # every node and client through the environment, as the Secret ray-auth does in infra/.
  local token
  token=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')
  (umask 077 && cat > "$STATE/env" <<EOF
# source .cluster/env: the team profile of scripts/cluster.sh
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export AWS_ACCESS_KEY_ID=seqops
export AWS_SECRET_ACCESS_KEY=seqops-local
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export SEQOPS_DATA_STORE=s3://seqops-data/data
EOF
  )
}

up() {
  [ -x "$VENV/bin/python" ] || { log "run make setup first"; exit 1; }
  "$VENV/bin/python" -c 'import psycopg2, moto' 2>/dev/null \
    || "$VENV/bin/python" -m pip install -q -e ".[dev,cluster]"
  mkdir -p "$STATE"
  write_env
  # shellcheck disable=SC1091
  source "$STATE/env"

  log "object store (moto) on :$S3_PORT"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" > "$STATE/s3.log" 2>&1 &
  echo $! > "$STATE/s3.pid"
  wait_for "the object store" 30 port_open "$S3_PORT"
  "$VENV/bin/python" - <<'EOF'
import os
import pyarrow.fs as pafs
fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"].split("//")[1],
                       scheme="http", region="us-east-1", allow_bucket_creation=True)
for bucket in ("seqops-data", "seqops-mlflow", "seqops-dvc"):
    fs.create_dir(bucket)
EOF

  log "PostgreSQL on :$PG_PORT"
  mkdir -p "$STATE/pg" "$STATE/pg-socket"
  chown postgres "$STATE/pg" "$STATE/pg-socket"
  runuser -u postgres -- "$PG/initdb" -D "$STATE/pg" -U postgres --auth=trust > "$STATE/pg-init.log"
  touch "$STATE/pg.log" && chown postgres "$STATE/pg.log"
  runuser -u postgres -- "$PG/pg_ctl" -D "$STATE/pg" -l "$STATE/pg.log" \
    -o "-p $PG_PORT -k $STATE/pg-socket -c listen_addresses=127.0.0.1" -w start > /dev/null
  runuser -u postgres -- "$PG/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres mlflow

  log "MLflow server on :$MLFLOW_PORT (PostgreSQL backend, artifacts in s3://seqops-mlflow)"
  nohup "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination s3://seqops-mlflow/artifacts --serve-artifacts \
    --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT" \
    > "$STATE/mlflow.log" 2>&1 &
  echo $! > "$STATE/mlflow.pid"
  wait_for "the MLflow server" 120 curl -fs "http://127.0.0.1:$MLFLOW_PORT/health"

  serve_config
  log "Ray head on :$RAY_PORT ($NODE_CPUS CPU)"
  "$VENV/bin/ray" start --head --port="$RAY_PORT" --num-cpus="$NODE_CPUS" --include-dashboard=false \
    --disable-usage-stats > "$STATE/ray-head.log" 2>&1
  worker_up
  log "up: source .cluster/env"
}

serve_config() {
  # serving/serve_config.yaml as this profile needs it: one HTTP proxy (its two nodes share
  # one host, so a proxy on each would want the same port) and replicas that fit nodes of one
  # CPU beside the stream holders. `seqops serve --config .cluster/serve_config.yaml`.
  "$VENV/bin/python" - "$ROOT/serving/serve_config.yaml" "$STATE/serve_config.yaml" <<'EOF'
import sys
import yaml
config = yaml.safe_load(open(sys.argv[1]))
config["proxy_location"] = "HeadOnly"
for deployment in config["applications"][0]["deployments"]:
    options = deployment.setdefault("ray_actor_options", {})
    options["num_cpus"] = min(options.get("num_cpus", 1), 0.5)
with open(sys.argv[2], "w") as out:
    out.write("# Written by scripts/cluster.sh from serving/serve_config.yaml for the team profile.\n")
    yaml.safe_dump(config, out, sort_keys=False)
EOF
}

worker_up() {
  # shellcheck disable=SC1091
  source "$STATE/env"
  log "Ray worker node ($NODE_CPUS CPU), blind to $ROOT and /tmp"
  nohup unshare --mount --propagation private bash -c "
    set -e
    mkdir -p /opt/seqops-venv
    mount --bind '$VENV' /opt/seqops-venv
    mount -t tmpfs tmpfs '$ROOT'
    mount -t tmpfs tmpfs /tmp
    exec /opt/seqops-venv/bin/python -c 'from ray.scripts.scripts import main; main()' start \
      --address=127.0.0.1:$RAY_PORT --num-cpus=$NODE_CPUS --block --disable-usage-stats \
      --dashboard-agent-listen-port=52399 --metrics-export-port=52398 \
      --min-worker-port=20000 --max-worker-port=20999" > "$STATE/ray-worker.log" 2>&1 &
  echo $! > "$STATE/ray-worker.pid"
  sleep 0.5
  readlink "/proc/$(cat "$STATE/ray-worker.pid")/ns/mnt" > "$STATE/ray-worker.ns"
  wait_for "the Ray worker node" 60 nodes_up
}

kill_worker() {
  # Every process of the blind node (its mount namespace): a node lost at once, as a
  # machine that dies, not a clean `ray stop`.
  [ -f "$STATE/ray-worker.ns" ] || return 0
  local ns pid
  ns=$(cat "$STATE/ray-worker.ns")
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" = "$ns" ] && kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$STATE/ray-worker.ns"
  [ "${1:-}" = "--no-wait" ] && return 0  # the head goes down too: nothing to wait for
  log "killed the Ray worker node; waiting for the head to mark it dead"
  for _ in $(seq 1 120); do nodes_up || return 0; sleep 0.5; done
}

nodes_up() {
  "$VENV/bin/python" - <<'EOF'
import ray, sys
ray.init(logging_level="ERROR", log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]
sys.exit(0 if len(alive) >= 2 else 1)
EOF
}

down() {
  [ -d "$STATE" ] || { log "nothing to stop"; return 0; }
  kill_worker --no-wait
  "$VENV/bin/ray" stop --force > /dev/null 2>&1 || true
  local pids=()
  for name in ray-worker mlflow s3; do
    if [ -f "$STATE/$name.pid" ]; then
      pids+=("$(cat "$STATE/$name.pid")")
      kill "${pids[-1]}" 2>/dev/null || true
    fi
  done
  # Gone before this returns, so that an `up` right after finds its ports free.
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -f "$STATE/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PG/pg_ctl" -D "$STATE/pg" -m fast -w stop > /dev/null || true
  fi
  rm -rf "$STATE"
  log "down"
}

case "${1:-}" in
  up) down; up ;;
  down) down ;;
  kill-worker) kill_worker ;;           # for the node-loss test (tests/cluster)
  restart-worker) kill_worker; worker_up ;;
  *) echo "usage: $0 up|down|kill-worker|restart-worker" >&2; exit 2 ;;
esac
