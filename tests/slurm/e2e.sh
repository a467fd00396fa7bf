#!/usr/bin/env bash
# The Slurm end-to-end test (issue 27): a one-machine Slurm cluster (deploy/slurm/
# local-cluster.sh), a swarm submitted as a 4-task job array with deploy/slurm/
# swarm-array.sbatch as shipped, a merge job (deploy/slurm/merge.sbatch) that waits for it
# with --dependency=afterok, and the merged verdict compared byte for byte with the unsharded
# run's. Then a shard file is taken away and merge must name the array task to resubmit.
#
#   tests/slurm/e2e.sh            # FAULTLINE=path/to/faultline to test another build
#
# Needs root or sudo (the daemons), and installs slurm-wlm and munge with apt-get when they
# are missing. Every wait is bounded: a cluster that does not start, or jobs that do not
# finish within E2E_TIMEOUT seconds (300), fail the test with the daemons' logs and the jobs'
# output printed. .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -E env "PATH=$PATH" "$0" "$@"
    fi
    echo "slurm e2e: FAIL: needs root (or sudo) to run slurmctld, slurmd and munged" >&2
    exit 1
fi

started=$SECONDS
target=${CARGO_TARGET_DIR:-$repo/target}
if [ -z "${FAULTLINE:-}" ]; then
    # Up to date after .ci/run's release tests, so no work there; never a stale binary here.
    cargo build --release -p faultline-cli
    FAULTLINE=$target/release/faultline
fi
FAULTLINE=$(realpath "$FAULTLINE")
SCENARIO=$repo/scenarios/swarm-checkpoint-restart.toml
SEEDS=${E2E_SEEDS:-1..17}
timeout_s=${E2E_TIMEOUT:-300}

state=$(mktemp -d /tmp/faultline-slurm-XXXXXX)
work=$(mktemp -d /tmp/faultline-slurm-work-XXXXXX)
chmod 755 "$state" "$work"
cleanup() {
    deploy/slurm/local-cluster.sh stop "$state" || true
    rm -rf "$state" "$work"
}
trap cleanup EXIT

fail() {
    echo "slurm e2e: FAIL: $*" >&2
    echo "----- squeue" >&2
    timeout 10 squeue 2>&1 >&2 || true
    for job in ${array_job:-} ${merge_job:-}; do
        echo "----- scontrol show job $job" >&2
        timeout 10 scontrol show job "$job" 2>&1 | grep -E "JobState|ExitCode|Reason" >&2 || true
    done
    for f in "$work"/*.out; do
        [ -f "$f" ] || continue
        echo "----- $f" >&2
        tail -n 30 "$f" >&2
    done
    deploy/slurm/local-cluster.sh logs "$state" || true
    exit 1
}

eval "$(deploy/slurm/local-cluster.sh start "$state")"
export SLURM_CONF

mkdir -p "$work/results"
vars="ALL,FAULTLINE=$FAULTLINE,SCENARIO=$SCENARIO,SEEDS=$SEEDS,RESULTS=$work/results"
array_job=$(timeout 30 sbatch --parsable --chdir="$work" --export="$vars" --array=0-3 \
    deploy/slurm/swarm-array.sbatch) || fail "sbatch of the array did not succeed"
merge_job=$(timeout 30 sbatch --parsable --chdir="$work" --export="$vars" \
    --dependency=afterok:"$array_job" deploy/slurm/merge.sbatch) || fail "sbatch of the merge did not succeed"
echo "slurm e2e: array job $array_job (4 tasks), merge job $merge_job after it"

# Meanwhile, the unsharded run to compare with.
"$FAULTLINE" swarm "$SCENARIO" --seeds "$SEEDS" > "$work/unsharded.txt" || true

deadline=$((SECONDS + timeout_s))
while [ -n "$(timeout 10 squeue -h -j "$array_job,$merge_job" 2>/dev/null || echo busy)" ]; do
    [ $SECONDS -lt $deadline ] || fail "the jobs did not finish within ${timeout_s}s"
    sleep 1
done

merge_state=$(timeout 10 scontrol show job "$merge_job" | grep -o "JobState=[A-Z_]*" || true)
[ "$merge_state" = "JobState=COMPLETED" ] || fail "the merge job ended $merge_state"
shards=$(ls "$work/results" | grep -c -E '^swarm-[0-9a-f]{8}-[0-3]-of-4\.json$' || true)
[ "$shards" = 4 ] || fail "expected 4 shard files, found: $(ls "$work/results")"
cmp "$work/unsharded.txt" "$work/results/verdict.txt" \
    || { diff "$work/unsharded.txt" "$work/results/verdict.txt" >&2 || true; fail "the merged verdict differs from the unsharded run's"; }

# A missing shard is named with the array task that resubmits it (tasks 0-3: shard 2 is 2).
rm "$work/results/"swarm-*-2-of-4.json
set +e
"$FAULTLINE" merge "$work/results/" > /dev/null 2> "$work/missing.txt"
status=$?
set -e
[ "$status" = 2 ] || fail "merge without shard 2 exited $status, expected 2"
grep -q -- "sbatch --array=2 " "$work/missing.txt" \
    || fail "merge without shard 2 did not name task 2: $(cat "$work/missing.txt")"

echo "slurm e2e: PASS: 4-task array, afterok merge, verdict equal to the unsharded run's" \
     "($(tail -n 1 "$work/unsharded.txt" | cut -c1-60)...); a missing shard names" \
     "'sbatch --array=2'; $((SECONDS - started)) s"
