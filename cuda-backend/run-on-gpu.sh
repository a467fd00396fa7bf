#!/usr/bin/env bash
# The whole GPU check of cuda-backend, in one script.
#
#   cuda-backend/run-on-gpu.sh --build   on a machine with Rust (no GPU needed): builds the
#                                        binaries and GPU test binaries into target/gpu-bundle
#   cuda-backend/run-on-gpu.sh           on the GPU machine (no Rust needed), from the
#                                        repository root, with target/gpu-bundle carried over
#
# The check: (1) the GPU is usable; (2) conformance: every kernel bit for bit against the CPU,
# every collective and the 8-rank 50-step job bit for bit against the simulator (the test
# binaries, with REQUIRE_GPU=1 so that a skip fails), and the faultline-gpu program's
# param_digest against the faultline program's for the same scenario and seed; (3) the NCCL
# transport: 4 processes on one GPU, each with its own NCCL_HOSTID, then a restart through a
# launcher (one process crashes, the others exit 75, all restart with --restore); (4) timings
# measured with CUDA events beside the simulator's model of the same job; (5) crash and
# restore: a run that writes trainer-core's checkpoints to real files and aborts, a new process
# that restores them with trainer-core's verified restore, and the same param_digest as an
# uninterrupted run;
# (6) recovery inside one process: scenarios/node-crash-mid-checkpoint.toml with its node
# crash injected, all ranks restarted through the local transport's barrier, and the
# simulator's param_digest at the end;
# (7) a [parallelism] layout (tp 2 x pp 2 x dp 2 on 8 ranks, 1F1B and GPipe) whose layers run as
# the split-MLP kernels: the simulator's param_digest, every shard's replicas agreeing.
# Written without a GPU and not yet run on one.
#
# Prints PASS/FAIL per check and exits non-zero if any failed. Writes its logs and a summary to
# $OUT (or target/gpu-check) for carrying back.
#
# DEVICE=host runs the same steps on host memory with no GPU (the GPU tests then skip and NCCL
# is left out): a rehearsal of the script itself on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-target/gpu-bundle}
PROFILE=${PROFILE:-release}
DEVICE=${DEVICE:-cuda}

if [[ "${1:-}" == "--build" ]]; then
    set -e
    # The artifacts must run on the lent machine: x86-64 glibc, as built here (see gpu.md).
    profile_flag=(--profile "$PROFILE")
    cargo build "${profile_flag[@]}" -p cuda-backend -p faultline-sim
    exe_of() { # the executable of the integration test target (not the binaries it also builds)
        cargo test "${profile_flag[@]}" "$@" --no-run --message-format=json 2>/dev/null |
            grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
    }
    dir=target/$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
    cp "$dir/faultline" "$dir/faultline-gpu" "$BUNDLE/"
    cp "$(exe_of -p cuda-backend --test gpu)" "$BUNDLE/gpu-kernels-test"
    cp "$(exe_of -p faultline-tests --test gpu_conformance)" "$BUNDLE/gpu-conformance-test"
    # Debug info is most of the size; the bundle must travel in a few tens of MiB.
    strip "$BUNDLE"/* 2>/dev/null || true
    du -sh "$BUNDLE"
    echo "bundle ready: carry $BUNDLE and run cuda-backend/run-on-gpu.sh on the GPU machine"
    exit 0
fi

OUT_DIR=${OUT:-target/gpu-check}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
failures=0
say() { echo "$*" | tee -a "$SUMMARY"; }
pass() { say "PASS $1"; }
passed_or_skipped() { # passed_or_skipped LOG WHAT: a test binary that passed, or only skipped
    if grep -q 'SKIPPED ' "$OUT_DIR/$1"; then say "SKIP $2 (no GPU; see $1)"; else pass "$2"; fi
}
fail() { say "FAIL $1: $2"; failures=$((failures + 1)); }
field() { # field NAME < json: the value of a top-level string or number field
    sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" | head -n 1
}

SIM="$BUNDLE/faultline"
for f in "$BUNDLE/faultline-gpu" "$SIM" "$BUNDLE/gpu-kernels-test" "$BUNDLE/gpu-conformance-test"; do
    [[ -x "$f" ]] || { echo "missing $f: run cuda-backend/run-on-gpu.sh --build first"; exit 2; }
done
GPU() { "$BUNDLE/faultline-gpu" "$@"; }
# ONLY="nccl restore" runs only the named checks (conformance nccl timings restore recovery
# layout);
# NCCL_TIMEOUT bounds each NCCL process, in seconds.
want() { [[ "${ONLY:-all}" == all || " ${ONLY} " == *" $1 "* ]]; }
NCCL_TIMEOUT=${NCCL_TIMEOUT:-300}
run_gpu() { GPU run "$@" --device "$DEVICE"; }

# (1) The GPU.
if GPU probe >"$OUT_DIR/probe.json" 2>&1; then
    pass "probe: $(cat "$OUT_DIR/probe.json")"
elif [[ "$DEVICE" == host ]]; then
    say "SKIP probe (DEVICE=host rehearsal): $(cat "$OUT_DIR/probe.json")"
else
    fail probe "$(cat "$OUT_DIR/probe.json")"
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT_DIR/nvidia-smi.txt" 2>&1 || true

SCENARIO=scenarios/quickstart.toml
JOB=(--seed 7 --set cluster.gpus=8 --set job.steps=50)

# (2) Conformance: the test binaries, with a skip counted as a failure.
if want conformance; then
    [[ "$DEVICE" == host ]] || export REQUIRE_GPU=1
    if "$BUNDLE/gpu-kernels-test" --test-threads=1 >"$OUT_DIR/gpu-kernels-test.log" 2>&1; then
        passed_or_skipped gpu-kernels-test.log "kernels bit for bit against trainer-core's CPU kernels and model"
    else
        fail kernels "see gpu-kernels-test.log"
    fi
    # The scenario-parsing test reads scenarios/ by the path it was built at; it needs no GPU and
    # ran where the bundle was built.
    if "$BUNDLE/gpu-conformance-test" --test-threads=1 \
        --skip the_runner_reads_every_scenario_as_the_simulator_does \
        --skip the_bundled_layout_scenario_ends_with_the_simulators_parameters_on_the_host_arm \
        >"$OUT_DIR/gpu-conformance-test.log" 2>&1; then
        passed_or_skipped gpu-conformance-test.log \
            "collectives and the 8-rank 50-step job bit for bit against the simulator"
    else
        fail conformance "see gpu-conformance-test.log"
    fi

    "$SIM" run "$SCENARIO" "${JOB[@]}" --json >"$OUT_DIR/sim.json" 2>&1
    run_gpu "$SCENARIO" "${JOB[@]}" >"$OUT_DIR/gpu-local.json" 2>&1
    sim_digest=$(field param_digest <"$OUT_DIR/sim.json")
    gpu_digest=$(field param_digest <"$OUT_DIR/gpu-local.json")
    if [[ -n "$sim_digest" && "$sim_digest" == "$gpu_digest" ]]; then
        pass "faultline-gpu (local transport) param_digest $gpu_digest equals the simulator's"
    else
        fail "runner digest" "simulator '$sim_digest', GPU '$gpu_digest' (see sim.json, gpu-local.json)"
    fi
fi

# (3) NCCL: 4 processes on one GPU, one rank each; each claims its own host.
if want nccl; then
    if [[ "$DEVICE" == host ]]; then
        say "SKIP NCCL transport (DEVICE=host rehearsal)"
    elif grep -q '"nccl":"present"' "$OUT_DIR/probe.json"; then
        NCCL_JOB=(--seed 7 --set cluster.gpus=4 --set cluster.gpus_per_node=4 --set job.steps=50)
        "$SIM" run "$SCENARIO" "${NCCL_JOB[@]}" --json >"$OUT_DIR/sim-nccl.json" 2>&1
        pids=()
        for rank in 0 1 2 3; do
            RANK=$rank WORLD_SIZE=4 LOCAL_RANK=$rank LOCAL_WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 \
                MASTER_PORT=29517 NCCL_SOCKET_IFNAME=lo NCCL_HOSTID="faultline-rank-$rank" \
                timeout "$NCCL_TIMEOUT" "$BUNDLE/faultline-gpu" run "$SCENARIO" "${NCCL_JOB[@]}" --transport nccl \
                >"$OUT_DIR/gpu-nccl-rank$rank.json" 2>"$OUT_DIR/gpu-nccl-rank$rank.err" &
            pids+=($!)
        done
        nccl_ok=1
        for pid in "${pids[@]}"; do wait "$pid" || nccl_ok=0; done
        sim_digest=$(field param_digest <"$OUT_DIR/sim-nccl.json")
        nccl_digest=$(field param_digest <"$OUT_DIR/gpu-nccl-rank0.json")
        agree=$(field replicas_agree <"$OUT_DIR/gpu-nccl-rank0.json")
        if [[ $nccl_ok == 1 && -n "$sim_digest" && "$sim_digest" == "$nccl_digest" && "$agree" == true ]]; then
            pass "NCCL transport, 4 processes on one GPU: param_digest $nccl_digest equals the simulator's"
        else
            fail "NCCL transport" "exit ok=$nccl_ok, simulator '$sim_digest', NCCL '$nccl_digest', agree '$agree' (see gpu-nccl-rank*.err)"
        fi
        # (3b) A restart through the launcher, as torchrun would do it: rank 2's process crashes
        # before step 25, the others time out, abort their communicator and exit 75; every
        # process is then started again with --restore and resumes from the step-20 checkpoint.
        CKPT=$(mktemp -d)
        TIERS=(--set checkpoint.interval=10 --checkpoint-dir "$CKPT/persistent" --host-dir "$CKPT/host"
            --recv-timeout-s 20)
        ulimit -c 0
        launch() { # launch PORT ATTEMPT ARGS...: the 4 ranks; their exit statuses in $statuses
            local port=$1 attempt=$2; shift 2
            local pids=() rank
            for rank in 0 1 2 3; do
                local extra=()
                [[ $attempt == crash && $rank == 2 ]] && extra=(--crash-at-step 25)
                RANK=$rank WORLD_SIZE=4 LOCAL_RANK=$rank LOCAL_WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 \
                    MASTER_PORT=$port NCCL_SOCKET_IFNAME=lo NCCL_HOSTID="faultline-rank-$rank" \
                    timeout "$NCCL_TIMEOUT" "$BUNDLE/faultline-gpu" run "$SCENARIO" "${NCCL_JOB[@]}" \
                    --transport nccl "${TIERS[@]}" "$@" "${extra[@]}" \
                    >"$OUT_DIR/nccl-$attempt-rank$rank.json" 2>"$OUT_DIR/nccl-$attempt-rank$rank.err" &
                pids+=($!)
            done
            statuses=""
            local pid
            for pid in "${pids[@]}"; do wait "$pid"; statuses="$statuses $?"; done
        }
        launch 29518 crash
        crash_statuses=$statuses
        launch 29519 restore --restore
        restore_statuses=$statuses
        nccl_restored=$(field param_digest <"$OUT_DIR/nccl-restore-rank0.json")
        nccl_from=$(field resumed_from_step <"$OUT_DIR/nccl-restore-rank0.json")
        if [[ "$crash_statuses" == " 75 75 134 75" && "$restore_statuses" == " 0 0 0 0" &&
            "$nccl_from" == 20 && "$nccl_restored" == "$sim_digest" ]]; then
            pass "NCCL restart: exits$crash_statuses, restored step 20, param_digest $nccl_restored equals the simulator's"
        else
            fail "NCCL restart" "crash exits$crash_statuses, restore exits$restore_statuses, resumed from '$nccl_from', digest '$nccl_restored' vs '$sim_digest' (see nccl-*-rank*.err)"
        fi
        rm -rf "$CKPT"
    else
        fail "NCCL transport" "libnccl.so not found (cudarc never looks for libnccl.so.2; see gpu.md)"
    fi
fi

# (4) Timings: CUDA events on the GPU beside the simulator's model of a job of the same real
# size (the modelled gradient is the real one: proxy_elems + 1 floats of 4 bytes).
if want timings; then
    {
        printf '%-10s %-14s %16s %16s %16s\n' proxy_elems collective gpu_step_ns gpu_allreduce_ns sim_step_ns
        for elems in 256 65536 1048576; do
            for algo in ring hierarchical; do
                sets=(--seed 7 --set cluster.gpus=8 --set job.steps=20 --set "job.proxy_elems=$elems"
                    --set "job.collective=$algo" --set "job.model_params=$((elems + 1))"
                    --set job.grad_bytes_per_param=4)
                g=$(run_gpu "$SCENARIO" "${sets[@]}" 2>/dev/null)
                s=$("$SIM" run "$SCENARIO" "${sets[@]}" --json 2>/dev/null)
                sim_ns=$(( $(field model_time_ns <<<"$s") / 20 ))
                printf '%-10s %-14s %16s %16s %16s\n' "$elems" "$algo" \
                    "$(sed -n 's/.*"step_ns_mean":\([0-9]*\).*/\1/p' <<<"$g")" \
                    "$(sed -n 's/.*"collective_ns_mean":\([0-9]*\).*/\1/p' <<<"$g")" "$sim_ns"
            done
        done
    } >"$OUT_DIR/timings.txt" 2>&1
    pass "timings recorded in timings.txt (device $DEVICE, local transport, one GPU)"
    cat "$OUT_DIR/timings.txt"
fi

# (5) Crash and restore from real checkpoint files: trainer-core's checkpoints every 10 steps,
# the persistent tier in $CKPT/persistent, each node's host memory in $CKPT/host.
if want restore; then
    CKPT=$(mktemp -d)
    TIERS=(--set checkpoint.interval=10 --checkpoint-dir "$CKPT/persistent" --host-dir "$CKPT/host")
    ulimit -c 0 # the crash is deliberate: no core file
    run_gpu "$SCENARIO" "${JOB[@]}" "${TIERS[@]}" \
        --crash-at-step 25 >"$OUT_DIR/crash.json" 2>"$OUT_DIR/crash.err"
    crash_status=$?
    run_gpu "$SCENARIO" "${JOB[@]}" "${TIERS[@]}" --restore \
        >"$OUT_DIR/restore.json" 2>"$OUT_DIR/restore.err"
    restored=$(field param_digest <"$OUT_DIR/restore.json")
    from=$(field resumed_from_step <"$OUT_DIR/restore.json")
    [[ -s "$OUT_DIR/gpu-local.json" ]] || run_gpu "$SCENARIO" "${JOB[@]}" >"$OUT_DIR/gpu-local.json" 2>&1
    uninterrupted=$(field param_digest <"$OUT_DIR/gpu-local.json")
    if [[ $crash_status != 0 && "$from" == 20 && -n "$restored" && "$restored" == "$uninterrupted" ]]; then
        pass "crash before step 25 (exit $crash_status), restore from step 20: param_digest $restored equals the uninterrupted run's"
    else
        fail "crash and restore" "crash exit $crash_status, resumed from '$from', digest '$restored' vs '$uninterrupted'"
    fi
    ls -lR "$CKPT" >"$OUT_DIR/checkpoints.txt"
    rm -rf "$CKPT"
fi

# (6) A node crash injected mid-checkpoint, recovered inside the process: every rank restarts
# through the local transport's barrier and restores trainer-core's committed checkpoint.
if want recovery; then
    CKPT=$(mktemp -d)
    RECOVERY=scenarios/node-crash-mid-checkpoint.toml
    run_gpu "$RECOVERY" --checkpoint-dir "$CKPT/persistent" --host-dir "$CKPT/host" \
        >"$OUT_DIR/recovery.json" 2>"$OUT_DIR/recovery.err"
    "$SIM" run "$RECOVERY" --json >"$OUT_DIR/recovery-sim.json" 2>"$OUT_DIR/recovery-sim.err"
    got=$(field param_digest <"$OUT_DIR/recovery.json")
    want=$(field param_digest <"$OUT_DIR/recovery-sim.json")
    restarts=$(field restarts <"$OUT_DIR/recovery.json")
    if [[ -n "$got" && "$got" == "$want" && "$restarts" == 1 ]]; then
        pass "node crash mid-checkpoint: 1 restart, param_digest $got equals the simulator's"
    else
        fail "recovery in process" "restarts '$restarts', digest '$got' vs the simulator's '$want'"
    fi
    rm -rf "$CKPT"
fi

# (7) A layout on the GPU: layout-quickstart.toml cut to 8 ranks of one GPU, each layer's
# forward and backward as the split-MLP kernels, against the simulator's digest over the shards.
if want layout; then
    for schedule in 1f1b gpipe; do
        LAYOUT_JOB=(--seed 7 --set cluster.gpus=8 --set parallelism.tp=2 --set parallelism.pp=2
            --set "job.schedule=$schedule")
        "$SIM" run scenarios/layout-quickstart.toml "${LAYOUT_JOB[@]}" --json \
            >"$OUT_DIR/layout-sim-$schedule.json" 2>&1
        run_gpu scenarios/layout-quickstart.toml "${LAYOUT_JOB[@]}" \
            >"$OUT_DIR/layout-gpu-$schedule.json" 2>&1
        want_digest=$(field param_digest <"$OUT_DIR/layout-sim-$schedule.json")
        got_digest=$(field param_digest <"$OUT_DIR/layout-gpu-$schedule.json")
        agree=$(field replicas_agree <"$OUT_DIR/layout-gpu-$schedule.json")
        if [[ -n "$want_digest" && "$got_digest" == "$want_digest" && "$agree" == true ]]; then
            pass "layout tp 2 x pp 2 x dp 2, $schedule: param_digest $got_digest equals the simulator's"
        else
            fail "layout $schedule" "simulator '$want_digest', GPU '$got_digest', agree '$agree' (see layout-*-$schedule.json)"
        fi
    done
fi

say "failures: $failures"
[[ $failures == 0 ]]
