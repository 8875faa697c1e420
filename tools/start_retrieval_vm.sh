#!/usr/bin/env bash
# Starts a wiki-18 retrieval server (envs/search/retrieval_server.py) on a CPU VM sized for its index.
#
# 1. create (or reuse) a GCE VM whose memory holds the chosen index in the page cache (table below);
# 2. copy this repository (tracked + untracked-not-ignored files) and install the pinned requirements;
# 3. copy the corpus, the index and the e5 encoder from gs:// to the VM's disk (`gcloud storage cp`);
# 4. start the server on 0.0.0.0 with a bearer token generated for this run (a file, mode 600, never
#    printed), wait for /health, and print the URL and the token file's path for the env hosts.
#
# Index types (e5-base-v2, 768-d, wiki-18's 21M passages; BUILD.md "Retrieval at wiki-18 scale"
# has the measured per-passage figures these come from):
#   flat      Search-R1's e5_Flat.index (exact, f32): 60 GiB index + 14 GiB corpus -> n2-highmem-16
#             (128 GB), 120 GB disk. Searches scan all of it: it must stay in the page cache.
#   sqfp16    exact over float16 codes: 30 GiB -> n2-highmem-8 (64 GB), 80 GB disk
#   hnsw      HNSW32,SQfp16: 35 GiB -> n2-highmem-8 (64 GB), 80 GB disk
#   ivfpq     IVF,PQ64: ~1.5 GiB -> n2-standard-8 (32 GB), 50 GB disk (approximate: check its recall)
# --dry-run prints every command (prefixed with '+ ') and runs none of them.
set -euo pipefail

PROG=start_retrieval_vm.sh
usage() {
  cat <<EOF
Usage: tools/$PROG --index-type flat|sqfp16|hnsw|ivfpq --data gs://BUCKET/DIR [options]

gs://BUCKET/DIR holds wiki-18.jsonl, the index and e5-base-v2/ (config.json, model.safetensors,
tokenizer.json). The index is Search-R1's e5_Flat.index (flat) or an index directory written by
'python -m envs.search.build_index --scale' (DIR/index/: meta.json + dense/index.faiss).

Options:
  --name NAME          VM name (default: $NAME)
  --zone ZONE          (default: $ZONE)
  --project PROJECT    (default: gcloud's configured project)
  --machine-type TYPE  override the index type's machine type
  --disk-gb N          override the index type's boot disk size
  --port PORT          server port (default: $PORT)
  --dry-run            print each command, prefixed with '+ ', and run nothing
  -h, --help

Then pass the URL to training (the token reaches env hosts as \$AGENTIC_RETRIEVAL_TOKEN):
  --config.env.kwargs.retriever=http --config.env.kwargs.retrieval_url=http://IP:PORT/retrieve
EOF
}
die() {
  echo "$PROG: $*" >&2
  exit 2
}
note() { echo "$PROG: $*" >&2; }

NAME=agentic-retrieval
ZONE=us-central2-b
PROJECT=
INDEX_TYPE=
DATA=
MACHINE_TYPE=
DISK_GB=
PORT=8000
DRY_RUN=0
while (($#)); do
  flag=$1
  case $flag in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
  esac
  if [[ $flag == --*=* ]]; then
    value=${flag#*=}
    flag=${flag%%=*}
    shift
  else
    (($# >= 2)) || die "$flag needs a value (see --help)"
    value=$2
    shift 2
  fi
  case $flag in
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --project) PROJECT=$value ;;
    --index-type) INDEX_TYPE=$value ;;
    --data) DATA=${value%/} ;;
    --machine-type) MACHINE_TYPE=$value ;;
    --disk-gb) DISK_GB=$value ;;
    --port) PORT=$value ;;
    *) die "unknown flag '$flag' (see --help)" ;;
  esac
done

case $INDEX_TYPE in
  flat) default_machine=n2-highmem-16 default_disk=120 ;;
  sqfp16 | hnsw) default_machine=n2-highmem-8 default_disk=80 ;;
  ivfpq) default_machine=n2-standard-8 default_disk=50 ;;
  *) die "--index-type must be flat, sqfp16, hnsw or ivfpq (see --help)" ;;
esac
MACHINE_TYPE=${MACHINE_TYPE:-$default_machine}
DISK_GB=${DISK_GB:-$default_disk}
[[ $DATA == gs://* ]] || die "--data must be a gs:// directory holding wiki-18.jsonl, the index and e5-base-v2/"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' must be lowercase letters, digits and '-'"
[[ $PORT =~ ^[0-9]+$ ]] || die "--port '$PORT' must be a number"
((DRY_RUN)) || command -v gcloud >/dev/null || die "gcloud not found (or use --dry-run)"

GCLOUD_FLAGS=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_FLAGS+=(--project="$PROJECT")
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_all() {
  local sep=
  for word in "$@"; do printf '%s' "$sep"; quote "$word"; sep=' '; done
}
run() {
  echo "+ $(quote_all "$@")"
  ((DRY_RUN)) || "$@"
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL=${TMPDIR:-/tmp}/agentic-$NAME.tar.gz
TOKEN_FILE=${TMPDIR:-/tmp}/agentic-$NAME.retrieval-token
REMOTE_DIR=agentic
REMOTE_TOKEN=retrieval_token

# ---------------------------------------------------------------- 1. the VM
note "VM $NAME ($MACHINE_TYPE, ${DISK_GB} GB) for a $INDEX_TYPE index from $DATA"
echo "+ gcloud compute instances describe $NAME $(quote_all "${GCLOUD_FLAGS[@]}") >/dev/null 2>&1"
if ((!DRY_RUN)) && gcloud compute instances describe "$NAME" "${GCLOUD_FLAGS[@]}" >/dev/null 2>&1; then
  note "reusing VM $NAME"
else
  run gcloud compute instances create "$NAME" "${GCLOUD_FLAGS[@]}" --machine-type="$MACHINE_TYPE" \
    --boot-disk-size="${DISK_GB}GB" --boot-disk-type=pd-ssd --image-family=ubuntu-2204-lts \
    --image-project=ubuntu-os-cloud --scopes=storage-ro
fi

# ---------------------------------------------------------------- 2. code, 3. data
run bash -c "cd $(quote "$HERE") && git ls-files -co --exclude-standard -z | tar --null -T - -czf $(quote "$TARBALL")"
if ((!DRY_RUN)); then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
else
  echo "+ (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > $TOKEN_FILE)"
fi
run gcloud compute scp "$TARBALL" "$NAME:/tmp/agentic.tar.gz" "${GCLOUD_FLAGS[@]}"
run gcloud compute ssh "$NAME" "${GCLOUD_FLAGS[@]}" --command="rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR \
&& tar -xzf /tmp/agentic.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR \
&& (command -v python3.11 >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv)) \
&& python3.11 -m venv .venv && .venv/bin/pip install -q --no-deps -r requirements.txt \
&& mkdir -p data && gcloud storage cp -r $(quote "$DATA")/'*' data/"
run gcloud compute scp "$TOKEN_FILE" "$NAME:$REMOTE_DIR/$REMOTE_TOKEN" "${GCLOUD_FLAGS[@]}"

# ---------------------------------------------------------------- 4. the server
if [[ $INDEX_TYPE == flat ]]; then
  serve="--faiss data/e5_Flat.index --corpus data/wiki-18.jsonl --encoder data/e5-base-v2 --encoder-family e5"
else
  serve="--index data/index --retriever dense --corpus data/wiki-18.jsonl --encoder data/e5-base-v2"
fi
run gcloud compute ssh "$NAME" "${GCLOUD_FLAGS[@]}" --command="cd ~/$REMOTE_DIR && chmod 600 $REMOTE_TOKEN && \
nohup .venv/bin/python -m envs.search.retrieval_server $serve --host 0.0.0.0 --port $PORT \
--token-file $REMOTE_TOKEN > retrieval.log 2>&1 < /dev/null & \
for i in \$(seq 600); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && exit 0; sleep 2; done; \
tail -20 retrieval.log; exit 1"
ip=IP-OF-$NAME
if ((!DRY_RUN)); then
  ip=$(gcloud compute instances describe "$NAME" "${GCLOUD_FLAGS[@]}" --format='get(networkInterfaces[0].networkIP)')
fi
echo "retrieval_url=http://$ip:$PORT/retrieve"
echo "token_file=$TOKEN_FILE"
