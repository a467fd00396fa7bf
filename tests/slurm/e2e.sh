#!/usr/bin/env bash
# The Slurm end-to-end test (issue 27): a one-machine Slurm cluster (deploy/slurm/
# local-cluster.sh), a swarm submitted as a 4-task job array with deploy/slurm/
# swarm-array.sbatch as shipped, a merge job (deploy/slurm/merge.sbatch) that waits for it
# with --dependency=afterok, and the merged verdict compared byte for byte with the unsharded
# run's; likewise a plan over array tasks 1-3 (plan-array.sbatch), its merged JSON against
# the unsharded plan's. Then a shard file is taken away and merge must name the array task
# to resubmit.
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
    for job in ${array_job:-} ${merge_job:-} ${plan_job:-} ${plan_merge:-}; do
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

# A plan too, over tasks numbered 1-3 (shard = task - 1), its merge as JSON.
PLAN=$repo/scenarios/plan-daly-closed-form.toml
mkdir -p "$work/plan"
plan_vars="ALL,FAULTLINE=$FAULTLINE,SCENARIO=$PLAN,SEEDS=30,RESULTS=$work/plan,MERGE_FLAGS=--json"
plan_job=$(timeout 30 sbatch --parsable --chdir="$work" --export="$plan_vars" --array=1-3 \
    --cpus-per-task=1 \
    deploy/slurm/plan-array.sbatch) || fail "sbatch of the plan array did not succeed"
plan_merge=$(timeout 30 sbatch --parsable --chdir="$work" --export="$plan_vars" \
    --dependency=afterok:"$plan_job" deploy/slurm/merge.sbatch) || fail "sbatch of the plan merge did not succeed"

# Meanwhile, the unsharded runs to compare with.
"$FAULTLINE" swarm "$SCENARIO" --seeds "$SEEDS" > "$work/unsharded.txt" || true
"$FAULTLINE" plan "$PLAN" --seeds 30 --json > "$work/unsharded-plan.json" || true

deadline=$((SECONDS + timeout_s))
jobs_all="$array_job,$merge_job,$plan_job,$plan_merge"
while [ -n "$(timeout 10 squeue -h -j "$jobs_all" 2>/dev/null || echo busy)" ]; do
    [ $SECONDS -lt $deadline ] || fail "the jobs did not finish within ${timeout_s}s"
    # A job this cluster can never run (more CPUs than the node has, a dependency that failed)
    # fails the test now rather than at the deadline.
    never=$(timeout 10 squeue -h -j "$jobs_all" -o "%i %r" 2>/dev/null \
        | grep -E "PartitionConfig|BadConstraints|DependencyNeverSatisfied|PartitionNodeLimit" || true)
    [ -z "$never" ] || fail "a job can never run: $never"
    sleep 1
done

merge_state=$(timeout 10 scontrol show job "$merge_job" | grep -o "JobState=[A-Z_]*" || true)
[ "$merge_state" = "JobState=COMPLETED" ] || fail "the merge job ended $merge_state"
shards=$(ls "$work/results" | grep -c -E '^swarm-[0-9a-f]{8}-[0-3]-of-4\.json$' || true)
[ "$shards" = 4 ] || fail "expected 4 shard files, found: $(ls "$work/results")"
cmp "$work/unsharded.txt" "$work/results/verdict.txt" \
    || { diff "$work/unsharded.txt" "$work/results/verdict.txt" >&2 || true; fail "the merged verdict differs from the unsharded run's"; }

cmp "$work/unsharded-plan.json" "$work/plan/verdict.txt" \
    || fail "the merged plan (tasks 1-3) differs from the unsharded plan's JSON"

# A missing shard is named with the array task that resubmits it (tasks 0-3: shard 2 is 2).
rm "$work/results/"swarm-*-2-of-4.json
set +e
"$FAULTLINE" merge "$work/results/" > /dev/null 2> "$work/missing.txt"
status=$?
set -e
[ "$status" = 2 ] || fail "merge without shard 2 exited $status, expected 2"
grep -q -- "sbatch --array=2 " "$work/missing.txt" \
    || fail "merge without shard 2 did not name task 2: $(cat "$work/missing.txt")"

echo "slurm e2e: PASS: 4-task swarm array and 3-task plan array (tasks 1-3), afterok merges," \
     "the swarm's verdict and the plan's JSON equal to the unsharded runs'" \
     "($(tail -n 1 "$work/unsharded.txt" | cut -c1-60)...); a missing shard names" \
     "'sbatch --array=2'; $((SECONDS - started)) s"
