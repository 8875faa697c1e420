#!/usr/bin/env bash
# Cloud TPU VM launcher for experiments/search_r1.py (see BUILD.md, "TPU deployment").
#
# 1. create (or reuse) the TPU VM (the recipe's slice: its accelerator type, runtime and zone come from
#    the recipe's tpu.topology, tools/recipe_info.py; on demand, --spot, or --queued through a queued
#    resource) and env host CPU VMs, as many as the recipe's concurrent episodes need (--env-hosts N to
#    choose);
# 2. copy this repository's files (tracked and untracked-but-not-ignored) to every VM and
#    install the pinned requirements (plus jax[tpu] on the TPU VM);
# 3. start `python -m agentic.env.host` on each CPU VM and wait until it is ready; the hosts listen
#    on 0.0.0.0 and require a token generated for this run (copied as a file, never printed);
# 4. with --actor-vms N: start N actor VMs (`--role=actor`, detached), actor i pushing groups to TPU
#    worker i mod W and following its weight stream;
# 5. run experiments/search_r1.py on every TPU worker (--worker=all) with that token in
#    $AGENTIC_ENV_TOKEN; the program calls jax.distributed.initialize() (--config.distributed=True).
#    With actor VMs each worker runs `--role=learner` (its trajectory queue and weight stream on
#    0.0.0.0); without, `--role=all` (actors on the TPU workers' own engines or SGLang servers).
# --dry-run prints every command (prefixed with '+ ') and runs none of them.
set -euo pipefail

PROG=launch_tpu.sh
usage() {
  cat <<EOF
Usage: ./$PROG --workdir gs://BUCKET/PATH [options] [-- extra flags for experiments/search_r1.py]

Runs experiments/search_r1.py on a Cloud TPU VM (all workers), with env hosts on CPU VMs.

Options:
  --name NAME               TPU VM name; env host VMs are NAME-env-1..N (default: $NAME)
  --zone ZONE               zone of every VM (default: $ZONE)
  --project PROJECT         GCP project (default: gcloud's configured project)
  --config VARIANT          variant of experiments/configs/search_r1.py (default: $VARIANT); its
                            tpu.topology picks the slice (tools/recipe_info.py VARIANT)
  --accelerator-type TYPE   TPU type, e.g. v5p-32, v6e-16, v5litepod-16, v4-32 (default: the
                            recipe's; another slice shape needs a recipe checked for it by
                            tools/aot_check.py)
  --version VERSION         TPU VM runtime version (default: the generation's, e.g. v2-alpha-tpuv5)
  --spot                    a Spot TPU VM (preemptible: rerun with the same --workdir to resume)
  --queued                  ask through a queued resource (waits for capacity) instead of creating
                            the VM at once
  --workdir DIR             required: checkpoints, TensorBoard events and plots; a gs:// path
                            every TPU worker can write; rerunning with it resumes
  --env-hosts N             CPU VMs running env hosts (default: enough for the recipe's concurrent
                            episodes at $ENV_MAX_SESSIONS per host; 0: the program starts env hosts
                            on the TPU workers itself); they listen on 0.0.0.0 and require a token
                            generated for each run (never printed)
  --env-machine-type TYPE   machine type of the env host VMs (default: $ENV_MACHINE_TYPE)
  --env-workers N           env worker processes per env host (default: $ENV_WORKERS)
  --env-port PORT           env host gRPC port (default: $ENV_PORT)
  --sglang-urls URLS        comma-separated SGLang server URLs (http://HOST:PORT); the actors
                            generate with them instead of the embedded engine
  --actor-vms N             VMs running actor processes (--role=actor; default: $ACTOR_VMS: the
                            actors run on the TPU workers); the TPU workers then run --role=learner
  --actor-machine-type TYPE machine type of the actor VMs (default: $ACTOR_MACHINE_TYPE)
  --queue-port PORT         the learners' trajectory queue port (default: $QUEUE_PORT)
  --weights-port PORT       the learners' weight stream port (default: $WEIGHTS_PORT)
  --detach                  start training under nohup (log: ~/agentic/train.log on each
                            worker) instead of streaming its output here
  --dry-run                 print each command, prefixed with '+ ', and run nothing
  -h, --help                show this help

Example:
  ./$PROG --project my-proj --workdir gs://my-bucket/search_r1_7b --env-hosts 2 \\
      -- --config.learner.lr=2e-6
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 2
}
note() { echo "$PROG: $*" >&2; }

# ---------------------------------------------------------------- flags
NAME=agentic-search-r1
ZONE=
PROJECT=
ACCELERATOR_TYPE=
VERSION=
SPOT=0
QUEUED=0
VARIANT=qwen2_5_7b_tpu
WORKDIR=
ENV_HOSTS=auto
ENV_MAX_SESSIONS=1024 # what an env host admits per env kind (EnvSpec.max_sessions of search_r1)
ENV_MACHINE_TYPE=n2-standard-16
ENV_WORKERS=4
ENV_PORT=50051
SGLANG_URLS=
ACTOR_VMS=0
ACTOR_MACHINE_TYPE=n2-standard-16
QUEUE_PORT=50060
WEIGHTS_PORT=50061
DETACH=0
DRY_RUN=0
EXTRA=()

while (($#)); do
  flag=$1
  case $flag in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --detach) DETACH=1; shift; continue ;;
    --spot) SPOT=1; shift; continue ;;
    --queued) QUEUED=1; shift; continue ;;
    --) shift; EXTRA=("$@"); break ;;
  esac
  # Every other flag takes a value: --flag VALUE or --flag=VALUE.
  if [[ $flag == --*=* ]]; then
    value=${flag#*=}
    flag=${flag%%=*}
    shift
  else
    case $flag in
      --name | --zone | --project | --accelerator-type | --version | --config | --workdir | --env-hosts | \
        --env-machine-type | --env-workers | --env-port | --sglang-urls | --actor-vms | --actor-machine-type | \
        --queue-port | --weights-port)
        (($# >= 2)) || die "$flag needs a value (see --help)"
        value=$2
        shift 2
        ;;
      *) die "unknown flag '$flag' (see --help)" ;;
    esac
  fi
  case $flag in
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --project) PROJECT=$value ;;
    --accelerator-type) ACCELERATOR_TYPE=$value ;;
    --version) VERSION=$value ;;
    --config) VARIANT=$value ;;
    --workdir) WORKDIR=$value ;;
    --env-hosts) ENV_HOSTS=$value ;;
    --env-machine-type) ENV_MACHINE_TYPE=$value ;;
    --env-workers) ENV_WORKERS=$value ;;
    --env-port) ENV_PORT=$value ;;
    --sglang-urls) SGLANG_URLS=$value ;;
    --actor-vms) ACTOR_VMS=$value ;;
    --actor-machine-type) ACTOR_MACHINE_TYPE=$value ;;
    --queue-port) QUEUE_PORT=$value ;;
    --weights-port) WEIGHTS_PORT=$value ;;
    *) die "unknown flag '$flag' (see --help)" ;;
  esac
done

[[ -n $WORKDIR ]] || die "--workdir is required: a gs:// path every TPU worker can write (see --help)"
[[ $WORKDIR == gs://* ]] || note "warning: --workdir $WORKDIR is not gs://; each TPU worker writes its own local copy"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' must be lowercase letters, digits and '-' (a GCE name)"
[[ $VARIANT =~ ^[A-Za-z0-9_]+$ ]] || die "--config '$VARIANT' is not a variant name (e.g. qwen2_5_7b_tpu)"
for pair in "--env-workers:$ENV_WORKERS" "--env-port:$ENV_PORT" \
  "--actor-vms:$ACTOR_VMS" "--queue-port:$QUEUE_PORT" "--weights-port:$WEIGHTS_PORT"; do
  [[ ${pair#*:} =~ ^[0-9]+$ ]] || die "${pair%%:*} '${pair#*:}' must be a non-negative integer"
done
if [[ -n $SGLANG_URLS ]]; then
  IFS=, read -ra urls <<<"$SGLANG_URLS"
  for url in "${urls[@]}"; do
    [[ $url =~ ^https?://[^/,]+ ]] || die "--sglang-urls: '$url' is not an http(s)://HOST:PORT URL"
  done
fi

[[ $ENV_HOSTS == auto || $ENV_HOSTS =~ ^[0-9]+$ ]] || die "--env-hosts '$ENV_HOSTS' must be a non-negative integer"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The recipe's slice and size (TOPOLOGY, ACCELERATOR_TYPE, RUNTIME, ZONE, TPU_HOSTS, SESSIONS).
PYTHON=python3
[[ ! -x $HERE/.venv/bin/python ]] || PYTHON=$HERE/.venv/bin/python
recipe=$("$PYTHON" "$HERE/tools/recipe_info.py" "$VARIANT" 2>&1) ||
  die "cannot read recipe '$VARIANT' (tools/recipe_info.py, with the repository's requirements installed): $recipe"
recipe_value() { sed -n "s/^$1=//p" <<<"$recipe"; }
[[ -n $ACCELERATOR_TYPE ]] || ACCELERATOR_TYPE=$(recipe_value ACCELERATOR_TYPE)
[[ -n $VERSION ]] || VERSION=$(recipe_value RUNTIME)
[[ -n $ZONE ]] || ZONE=$(recipe_value ZONE)
SESSIONS=$(recipe_value SESSIONS)
if [[ $ENV_HOSTS == auto ]]; then
  ENV_HOSTS=$(((SESSIONS + ENV_MAX_SESSIONS - 1) / ENV_MAX_SESSIONS))
  ((ENV_HOSTS >= 1)) || ENV_HOSTS=1
fi
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI (or use --dry-run)"
fi

# ---------------------------------------------------------------- helpers
GCLOUD_FLAGS=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_FLAGS+=(--project="$PROJECT")

# Shell-quotes one word only when it needs it, so printed commands stay readable and exact.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
quote_all() {
  local sep=
  for word in "$@"; do
    printf '%s' "$sep"
    quote "$word"
    sep=' '
  done
}

# run CMD...: prints '+ CMD' and runs it (unless --dry-run).
run() {
  echo "+ $(quote_all "$@")"
  ((DRY_RUN)) || "$@"
}

# exists CMD...: prints and runs a describe command; true when the resource exists.
# A dry run assumes it does not (and so prints the create commands).
exists() {
  echo "+ $(quote_all "$@") >/dev/null 2>&1"
  ((!DRY_RUN)) && "$@" >/dev/null 2>&1
}

TARBALL=${TMPDIR:-/tmp}/agentic-$NAME.tar.gz
TOKEN_FILE=${TMPDIR:-/tmp}/agentic-$NAME.env-token # this run's env host token (mode 600)
REMOTE_TOKEN=env_token                             # under ~/$REMOTE_DIR on every VM
REMOTE_TARBALL=/tmp/agentic.tar.gz
REMOTE_DIR=agentic # under the remote user's home

# Unpack the copied tarball and create the venv; the TPU VM also gets libtpu (requirements-tpu.txt).
install_command() {
  local extra=$1
  echo "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf $REMOTE_TARBALL -C ~/$REMOTE_DIR" \
    "&& cd ~/$REMOTE_DIR" \
    "&& (command -v python3.11 >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv))" \
    "&& python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip" \
    "&& .venv/bin/pip install -q --no-deps -r requirements.txt$extra"
}
TPU_INSTALL=$(install_command " && .venv/bin/pip install -q --no-deps -r requirements-tpu.txt")
CPU_INSTALL=$(install_command "")

# ---------------------------------------------------------------- 1. VMs
note "TPU VM $NAME ($ACCELERATOR_TYPE, $VERSION) in $ZONE; $ENV_HOSTS env host VM(s) for $SESSIONS concurrent episodes; workdir $WORKDIR"
capacity=()
((!SPOT)) || capacity=(--spot)
if exists gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}"; then
  note "reusing TPU VM $NAME"
elif ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_FLAGS[@]}" --node-id="$NAME" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" "${capacity[@]}"
  # Wait until the slice is granted (a queued resource may wait hours for capacity).
  wait_cmd="until gcloud compute tpus queued-resources describe $(quote "$NAME") $(quote_all "${GCLOUD_FLAGS[@]}")"
  wait_cmd+=" --format='value(state.state)' | grep -q ACTIVE; do sleep 60; done"
  run bash -c "$wait_cmd"
else
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" "${capacity[@]}"
fi

# cpu_vm NAME MACHINE_TYPE WHAT: creates the CPU VM unless it exists.
cpu_vm() {
  if exists gcloud compute instances describe "$1" "${GCLOUD_FLAGS[@]}"; then
    note "reusing $3 VM $1"
  else
    run gcloud compute instances create "$1" "${GCLOUD_FLAGS[@]}" --machine-type="$2" \
      --image-family=ubuntu-2204-lts --image-project=ubuntu-os-cloud --boot-disk-size=100GB
  fi
}
ENV_VMS=()
for ((i = 1; i <= ENV_HOSTS; i++)); do
  ENV_VMS+=("$NAME-env-$i")
  cpu_vm "$NAME-env-$i" "$ENV_MACHINE_TYPE" "env host"
done
ACTOR_VM_NAMES=()
for ((i = 0; i < ACTOR_VMS; i++)); do
  ACTOR_VM_NAMES+=("$NAME-actor-$i")
  cpu_vm "$NAME-actor-$i" "$ACTOR_MACHINE_TYPE" actor
done

# ---------------------------------------------------------------- 2. code + install
run bash -c "cd $(quote "$HERE") && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(quote "$TARBALL")"
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_TARBALL" --worker=all "${GCLOUD_FLAGS[@]}"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${GCLOUD_FLAGS[@]}" --command="$TPU_INSTALL"
if ((ENV_HOSTS)); then
  # A fresh secret per run: env hosts run code sandboxes, so only this run's trainer may reach them.
  run bash -c "umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > $(quote "$TOKEN_FILE")"
  run gcloud compute tpus tpu-vm scp "$TOKEN_FILE" "$NAME:$REMOTE_DIR/$REMOTE_TOKEN" --worker=all "${GCLOUD_FLAGS[@]}"
fi
for vm in "${ENV_VMS[@]}" "${ACTOR_VM_NAMES[@]}"; do
  run gcloud compute scp "$TARBALL" "$vm:$REMOTE_TARBALL" "${GCLOUD_FLAGS[@]}"
  run gcloud compute ssh "$vm" "${GCLOUD_FLAGS[@]}" --command="$CPU_INSTALL"
  ((!ENV_HOSTS)) || run gcloud compute scp "$TOKEN_FILE" "$vm:$REMOTE_DIR/$REMOTE_TOKEN" "${GCLOUD_FLAGS[@]}"
done

# ---------------------------------------------------------------- 3. env hosts
ENV_ADDRESSES=()
for vm in "${ENV_VMS[@]}"; do
  # (Re)start the host in the background, then wait for its "ready" line (or show its log).
  start="cd ~/$REMOTE_DIR && { [ ! -f env_host.pid ] || kill \$(cat env_host.pid) 2>/dev/null || true; }"
  start+=" && chmod 600 $REMOTE_TOKEN && { nohup .venv/bin/python -m agentic.env.host --port $ENV_PORT"
  start+=" --envs search_r1 --import envs.search --bind 0.0.0.0 --token-file $REMOTE_TOKEN --workers $ENV_WORKERS"
  start+=" > env_host.log 2>&1 < /dev/null & echo \$! > env_host.pid; }"
  start+=" && for _ in \$(seq 120); do grep -q ' ready on ' env_host.log && exit 0; sleep 1; done;"
  start+=" cat env_host.log; exit 1"
  run gcloud compute ssh "$vm" "${GCLOUD_FLAGS[@]}" --command="$start"
  describe_ip=(gcloud compute instances describe "$vm" "${GCLOUD_FLAGS[@]}" --format='get(networkInterfaces[0].networkIP)')
  echo "+ $(quote_all "${describe_ip[@]}")"
  if ((DRY_RUN)); then
    ip="IP-OF-$vm" # placeholder: the real run asks gcloud
  else
    ip=$("${describe_ip[@]}")
  fi
  ENV_ADDRESSES+=("$ip:$ENV_PORT")
done

# ---------------------------------------------------------------- 4. actors (--actor-vms)
common=()
if ((${#ENV_ADDRESSES[@]})); then
  common+=("--config.env.hosts=$(IFS=,; echo "${ENV_ADDRESSES[*]}")")
fi
if [[ -n $SGLANG_URLS ]]; then
  common+=(--config.generator.backend=sglang "--config.generator.sglang_urls=$SGLANG_URLS")
fi
# The token reaches EnvClients in their environment (read remotely: never printed here).
token_env=
((!ENV_HOSTS)) || token_env="AGENTIC_ENV_TOKEN=\"\$(cat $REMOTE_TOKEN)\" "
# >>> issue 31: the run's transport token and firewall (trust boundaries; see BUILD.md "Trust boundaries")
# The learner's trajectory queue and weight stream listen on 0.0.0.0 when actors run on their own VMs:
# they then need a token. A fresh one per run, made like the env token (mode 600 file, copied, read
# remotely into $AGENTIC_TRANSPORT_TOKEN: never in config.json, argv, logs or this script's output).
# A firewall admits the run's ports only from the run's own VMs (network tag agentic-NAME).
if ((ACTOR_VMS)); then
  TRANSPORT_TOKEN_FILE=${TMPDIR:-/tmp}/agentic-$NAME.transport-token
  run bash -c "umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > $(quote "$TRANSPORT_TOKEN_FILE")"
  run gcloud compute tpus tpu-vm scp "$TRANSPORT_TOKEN_FILE" "$NAME:$REMOTE_DIR/transport_token" --worker=all "${GCLOUD_FLAGS[@]}"
  for vm in "${ACTOR_VM_NAMES[@]}"; do
    run gcloud compute scp "$TRANSPORT_TOKEN_FILE" "$vm:$REMOTE_DIR/transport_token" "${GCLOUD_FLAGS[@]}"
  done
  token_env="AGENTIC_TRANSPORT_TOKEN=\"\$(chmod 600 transport_token && cat transport_token)\" $token_env"
fi
if ((ENV_HOSTS || ACTOR_VMS)); then
  RUN_TAG=agentic-$NAME
  run gcloud compute tpus tpu-vm update "$NAME" "--add-tags=$RUN_TAG" "${GCLOUD_FLAGS[@]}"
  for vm in "${ENV_VMS[@]}" "${ACTOR_VM_NAMES[@]}"; do
    run gcloud compute instances add-tags "$vm" "--tags=$RUN_TAG" "${GCLOUD_FLAGS[@]}"
  done
  FW_FLAGS=(--network=default "--target-tags=$RUN_TAG" "--rules=tcp:$ENV_PORT,tcp:$QUEUE_PORT,tcp:$WEIGHTS_PORT")
  [[ -z $PROJECT ]] || FW_FLAGS+=("--project=$PROJECT")
  if ! exists gcloud compute firewall-rules describe "$RUN_TAG-allow" "${FW_FLAGS[@]:3}"; then
    run gcloud compute firewall-rules create "$RUN_TAG-allow" "${FW_FLAGS[@]}" --action=ALLOW --priority=900 \
      "--source-tags=$RUN_TAG"
    run gcloud compute firewall-rules create "$RUN_TAG-deny" "${FW_FLAGS[@]}" --action=DENY --priority=1000 \
      --source-ranges=0.0.0.0/0
  fi
fi
# <<< issue 31
role=(--role=all)
if ((ACTOR_VMS)); then
  role=(--role=learner --config.remote.bind=0.0.0.0 "--config.queue.port=$QUEUE_PORT"
    "--config.remote.weights_port=$WEIGHTS_PORT")
  describe_tpu=(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}"
    --format='value(networkEndpoints[].ipAddress)')
  echo "+ $(quote_all "${describe_tpu[@]}")"
  if ((DRY_RUN)); then
    TPU_IPS=("IP-OF-$NAME-worker-0") # placeholder: the real run asks gcloud (one IP per worker)
  else
    IFS=';, ' read -ra TPU_IPS <<<"$("${describe_tpu[@]}")"
  fi
  ((${#TPU_IPS[@]})) || die "found no IP address of TPU VM $NAME's workers (gcloud ... describe); cannot point actors at it"
  for ((i = 0; i < ACTOR_VMS; i++)); do
    learner=${TPU_IPS[i % ${#TPU_IPS[@]}]} # actor i feeds TPU worker i mod W (its local data)
    actor=(.venv/bin/python experiments/search_r1.py "--config=experiments/configs/search_r1.py:$VARIANT"
      --role=actor "--actor_id=$i" "--config.remote.queue=$learner:$QUEUE_PORT"
      "--config.remote.weights=$learner:$WEIGHTS_PORT" --config.remote.wait_s=3600 "${common[@]}" "${EXTRA[@]}")
    # Detached: an actor waits (up to wait_s) for its learner to come up, and stops when it finishes.
    run gcloud compute ssh "${ACTOR_VM_NAMES[i]}" "${GCLOUD_FLAGS[@]}" \
      --command="cd ~/$REMOTE_DIR && ${token_env}nohup $(quote_all "${actor[@]}") > actor.log 2>&1 < /dev/null &"
  done
fi

# ---------------------------------------------------------------- 5. train
train=(.venv/bin/python experiments/search_r1.py
  "--config=experiments/configs/search_r1.py:$VARIANT" "--workdir=$WORKDIR" --config.distributed=True
  "${role[@]}" "${common[@]}" "${EXTRA[@]}")
command="cd ~/$REMOTE_DIR && $token_env$(quote_all "${train[@]}")"
if ((DETACH)); then
  command="cd ~/$REMOTE_DIR && ${token_env}nohup $(quote_all "${train[@]}") > train.log 2>&1 < /dev/null &"
fi
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${GCLOUD_FLAGS[@]}" --command="$command"
if ((DETACH)); then
  note "training started; follow it with: gcloud compute tpus tpu-vm ssh $NAME --worker=0 ${GCLOUD_FLAGS[*]} --command='tail -f ~/$REMOTE_DIR/train.log'"
fi
