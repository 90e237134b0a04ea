#!/usr/bin/env bash
# Install jaxflows on every worker of a Cloud TPU VM (single host or pod slice) and print the
# command that launches a multi-host training run.
#
# Usage (from the repository root, on a machine with the gcloud CLI logged in):
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b ./tpu_setup.sh
#   TPU_NAME=my-v5e-16 ZONE=us-west4-a REPO_URL=<git url> DATASETS="mnist digits" \
#     CONFIG=experiments/configs/vae_mnist.py:ccliniaf_k5 WORKDIR=gs://my-bucket/runs/t1 ./tpu_setup.sh
#
# Steps, each run on all workers at once (gcloud ... ssh --worker=all):
#   1. ship the code: `git clone REPO_URL` when REPO_URL is set, else a tarball of the files git
#      tracks in this checkout (plus untracked, non-ignored ones), copied with `tpu-vm scp`;
#   2. create a virtual environment with $PYTHON (>= 3.11) and `pip install -e .` plus the TPU
#      build of jax at the same version (`jax[tpu]==<version>`);
#   3. `jaxflows data prepare NAME` for each of $DATASETS (every worker has its own disk and
#      reads its own shard of the data);
#   4. check that every worker sees the TPU, then print the launch command.
#
# On TPU VMs `jax.distributed.initialize()` needs no arguments (it finds the coordinator and
# process ids itself), so the same `jaxflows train` command runs on all workers. The workdir must
# be shared storage (a gs:// bucket) so that checkpoints are visible to every worker.
set -euo pipefail

# ---- settings (override through the environment) -------------------------------------------
TPU_NAME="${TPU_NAME:-jaxflows-tpu}"          # name of the TPU VM / pod slice
ZONE="${ZONE:-us-central2-b}"                 # its zone
PROJECT="${PROJECT:-}"                        # GCP project; empty = gcloud's default
REPO_URL="${REPO_URL:-}"                      # git URL to clone; empty = copy this checkout
REPO_REF="${REPO_REF:-}"                      # branch/tag/commit to check out after cloning
REMOTE_DIR="${REMOTE_DIR:-jaxflows}"          # install folder on the workers (under ~)
PYTHON="${PYTHON:-python3.11}"                # interpreter for the venv (>= 3.11)
JAX_VERSION="${JAX_VERSION:-}"                # empty = the jax version the package resolves to
EXTRAS="${EXTRAS:-}"                          # e.g. "chem" to install jaxflows[chem]
DATASETS="${DATASETS:-mnist}"                 # datasets to prepare on every worker
DATA_DIR="${DATA_DIR:-}"                      # empty = ~/.cache/jaxflows/datasets on workers
CONFIG="${CONFIG:-experiments/configs/vae_mnist.py:ccliniaf_k5}"
WORKDIR="${WORKDIR:-gs://YOUR_BUCKET/jaxflows/${TPU_NAME}}"
CHECK_DEVICES="${CHECK_DEVICES:-1}"           # 1 = run a jax device check on all workers

# ---- helpers -------------------------------------------------------------------------------
GCLOUD_FLAGS=(--zone "$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_FLAGS+=(--project "$PROJECT")
fi

on_all_workers() {
  # Run one bash command line on every worker of the slice.
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
    --command "set -euo pipefail; $1"
}

log() { printf '\n== %s\n' "$*"; }

DATA_FLAG=""
if [[ -n "$DATA_DIR" ]]; then
  DATA_FLAG="--data_dir $DATA_DIR"
fi
PKG_SPEC="."
if [[ -n "$EXTRAS" ]]; then
  PKG_SPEC=".[${EXTRAS}]"
fi

# ---- 1. code -------------------------------------------------------------------------------
if [[ -n "$REPO_URL" ]]; then
  log "cloning $REPO_URL into ~/$REMOTE_DIR on all workers"
  checkout=""
  if [[ -n "$REPO_REF" ]]; then
    checkout="&& git -C ~/$REMOTE_DIR fetch --all && git -C ~/$REMOTE_DIR checkout $REPO_REF"
  fi
  on_all_workers "if [ -d ~/$REMOTE_DIR/.git ]; then git -C ~/$REMOTE_DIR pull --ff-only; \
else git clone $REPO_URL ~/$REMOTE_DIR; fi $checkout"
else
  repo_root="$(git rev-parse --show-toplevel)"
  tmpdir="$(mktemp -d)"
  tarball="$tmpdir/jaxflows-src.tar.gz"
  trap 'rm -rf "$tmpdir"' EXIT
  log "packing $repo_root (tracked and untracked, non-ignored files)"
  (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - -czf "$tarball")
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/jaxflows-src.tar.gz" \
    "${GCLOUD_FLAGS[@]}" --worker=all
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jaxflows-src.tar.gz -C ~/$REMOTE_DIR \
&& rm ~/jaxflows-src.tar.gz"
fi

# ---- 2. environment ------------------------------------------------------------------------
log "creating ~/$REMOTE_DIR/.venv with $PYTHON and installing jaxflows + jax[tpu]"
on_all_workers "command -v $PYTHON >/dev/null || { sudo apt-get update -qq && \
sudo apt-get install -y -qq ${PYTHON} ${PYTHON}-venv; }
cd ~/$REMOTE_DIR
[ -x .venv/bin/python ] || $PYTHON -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '$PKG_SPEC'
JV='$JAX_VERSION'; [ -n \"\$JV\" ] || JV=\$(.venv/bin/python -c 'import jax; print(jax.__version__)')
.venv/bin/python -m pip install -q \"jax[tpu]==\$JV\"
.venv/bin/python -c 'import jax, jaxflows; print(\"jax\", jax.__version__, \"jaxflows\", jaxflows.__version__)'"

# ---- 3. data -------------------------------------------------------------------------------
for name in $DATASETS; do
  log "preparing $name on all workers"
  on_all_workers "cd ~/$REMOTE_DIR && .venv/bin/jaxflows data prepare $name $DATA_FLAG"
done

# ---- 4. check and launch line --------------------------------------------------------------
if [[ "$CHECK_DEVICES" == "1" ]]; then
  log "checking the TPU on all workers (jax.distributed.initialize auto-detects the slice)"
  on_all_workers "cd ~/$REMOTE_DIR && timeout 600 .venv/bin/python -c '
import jax
jax.distributed.initialize()
print(\"process\", jax.process_index(), \"of\", jax.process_count(), \"local\",
      jax.local_device_count(), \"global\", jax.device_count(), jax.devices()[0].device_kind)'"
fi

launch="cd ~/$REMOTE_DIR && .venv/bin/jaxflows train --config $CONFIG --workdir $WORKDIR"
log "done. Launch a multi-host run (the same command on every worker):"
printf "gcloud compute tpus tpu-vm ssh %s --zone %s%s --worker=all --command '%s'\n" \
  "$TPU_NAME" "$ZONE" "${PROJECT:+ --project $PROJECT}" "$launch"
echo "(detach with: ... --command 'nohup bash -c \"$launch\" > ~/train.log 2>&1 &')"
