//! Hangs: a rank that stops issuing collectives, alive. Only the collective watchdog may see
//! it (never the heartbeat monitor), and the flight recorder's analysis must name the rank
//! that was made to hang and the collective it never joined, for every position, rank and
//! world size the sweep draws.

use faultline_sim::books::{Detector, FaultKind, LostCause};
use faultline_sim::flight::{Collective, Verdict};
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::load_str;
use trainer_core::digest::mix64;

/// `gpus` GPUs (8 a node, or one partial node), `steps` steps, rank `rank` hung at `step`.
fn run(gpus: usize, steps: u64, hang: Option<(usize, u64, &str)>) -> RunReport {
    run_with(gpus, steps, hang, &[])
}

fn run_with(gpus: usize, steps: u64, hang: Option<(usize, u64, &str)>, sets: &[&str]) -> RunReport {
    let mut text = format!(
        "[cluster]\ngpus = {gpus}\ngpus_per_node = {}\n\
         [job]\nsteps = {steps}\nproxy_elems = 16\nmodel_params = 1e9\n\
         [checkpoint]\ninterval = 2\n\
         [recovery]\nrestart_time = \"1min\"\nheartbeat_interval = \"5s\"\n\
         collective_timeout = \"2min\"\n",
        gpus.min(8)
    );
    match hang {
        Some((rank, step, desync)) if desync.starts_with("desync") => {
            let kind = desync.strip_prefix("desync-").unwrap_or("sequence");
            text +=
                &format!("[[faults.desync]]\ngpu = {rank}\nat_step = {step}\nkind = \"{kind}\"\n");
        }
        Some((rank, step, point)) => {
            text +=
                &format!("[[faults.hang]]\ngpu = {rank}\nat_step = {step}\npoint = \"{point}\"\n");
        }
        None => {}
    }
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let scenario = load_str("hang", "<test>", &text, &sets).unwrap();
    run_scenario(&scenario).unwrap()
}

#[test]
fn a_hang_is_seen_by_the_watchdog_alone_and_the_recorder_names_its_rank() {
    let fault_free = run(64, 8, None);
    for point in ["data_loader", "kernel"] {
        let report = run(64, 8, Some((21, 5, point)));
        let faults = &report.faults;
        assert_eq!(faults.injected.get(&FaultKind::Hang), Some(&1), "{point}");
        // Alive: the heartbeat monitor never fires; the watchdog does.
        assert_eq!(faults.detected.get(&Detector::Heartbeat), None, "{point}");
        assert_eq!(
            faults.detected.get(&Detector::Watchdog),
            Some(&1),
            "{point}"
        );
        let [flight] = faults.flight_recorder.as_slice() else {
            panic!(
                "{point}: one watchdog firing, one dump: {:?}",
                faults.flight_recorder
            );
        };
        assert_eq!(flight.diagnosis.verdict, Verdict::Hang, "{point}");
        assert_eq!(flight.diagnosis.missing_ranks, vec![21], "{point}");
        assert_eq!(flight.diagnosis.started_count, 63, "{point}");
        assert_eq!(flight.named_injected_rank, Some(true), "{point}");
        assert_eq!(flight.injected.map(|h| (h.rank, h.step)), Some((21, 5)));
        // Recovered: every step done, the fault-free parameters.
        assert_eq!(report.steps_completed, 8);
        assert_eq!(report.param_digest, fault_free.param_digest, "{point}");
    }
}

/// A seeded sweep of world sizes, ranks and steps: the diagnosis names the injected rank and
/// the first collective of the hung step every time.
#[test]
fn the_recorder_names_the_hung_rank_for_every_position_rank_and_size() {
    for (i, gpus) in [8usize, 24, 64, 512, 4096].into_iter().enumerate() {
        for draw in 0..2u64 {
            let hash = mix64(0x4a46 ^ (i as u64) << 8 ^ draw);
            let rank = (hash % gpus as u64) as usize;
            let step = 1 + (hash >> 32) % 3;
            let point = if draw % 2 == 0 {
                "data_loader"
            } else {
                "kernel"
            };
            let report = run(gpus, 4, Some((rank, step, point)));
            let case = format!("{gpus} GPUs, rank {rank}, step {step}, {point}");
            let [flight] = report.faults.flight_recorder.as_slice() else {
                panic!("{case}: {:?}", report.faults.flight_recorder);
            };
            assert_eq!(flight.diagnosis.missing_ranks, vec![rank], "{case}");
            assert_eq!(flight.named_injected_rank, Some(true), "{case}");
            let collective = flight.diagnosis.collective.as_ref().expect("a collective");
            // One gradient all-reduce a step on this job, numbered from 1.
            assert!(
                collective.collective_seq_id > step,
                "{case}: {collective:?}"
            );
            assert_eq!(report.steps_completed, 4, "{case}");
        }
    }
}

/// Without a hang the watchdog never fires: no dump, no diagnosis, no hang booked.
#[test]
fn without_a_hang_nothing_is_dumped() {
    let report = run(64, 4, None);
    assert!(report.faults.flight_recorder.is_empty());
    assert_eq!(report.faults.injected.get(&FaultKind::Hang), None);
}

/// The progress monitor sees the hung rank fall behind its peers after its timeout, long before
/// the watchdog, and the dump it triggers names the same rank; a healthy run never trips it.
#[test]
fn the_progress_monitor_finds_a_hang_sooner_than_the_watchdog_and_nothing_else() {
    let monitor = ["recovery.progress_timeout=20s"];
    let watchdog = run(64, 8, Some((13, 4, "kernel")));
    let report = run_with(64, 8, Some((13, 4, "kernel")), &monitor);
    let detected = &report.faults.detected;
    assert_eq!(
        detected.get(&Detector::ProgressMonitor),
        Some(&1),
        "{detected:?}"
    );
    assert_eq!(detected.get(&Detector::Watchdog), None, "{detected:?}");
    let [flight] = report.faults.flight_recorder.as_slice() else {
        panic!("{:?}", report.faults.flight_recorder);
    };
    assert_eq!(flight.diagnosis.missing_ranks, vec![13]);
    let hung_at = flight.injected.expect("the injected hang").at_ns;
    // Flagged within the timeout plus one check (a tenth of it) of the rank's last
    // collective, which began before the hang.
    let latency = flight.diagnosis.at_ns - hung_at;
    assert!(latency <= 22_000_000_000, "{latency} ns");
    let lost = |r: &RunReport| r.lost_time_ns_by_cause.get(&LostCause::Detection).copied();
    assert!(
        lost(&report) < lost(&watchdog),
        "{:?} vs {:?}",
        lost(&report),
        lost(&watchdog)
    );
    // No hang: the monitor stays quiet over a whole run, the restarts' gaps included.
    let quiet = run_with(64, 8, None, &monitor);
    assert!(
        quiet.faults.detected.is_empty(),
        "{:?}",
        quiet.faults.detected
    );
}

/// A desync: every rank alive and every rank inside a collective, so neither heartbeats nor
/// the progress monitor (nobody is behind) fire; the watchdog does, and the recorder names the
/// rank whose collective differs from everyone else's at that place, for every size drawn.
#[test]
fn a_desync_is_found_by_the_watchdog_and_named_by_the_recorder() {
    let monitor = ["recovery.progress_timeout=20s"];
    for (i, gpus) in [8usize, 64, 512].into_iter().enumerate() {
        let hash = mix64(0xde5 ^ i as u64);
        let (rank, step) = ((hash % gpus as u64) as usize, 1 + (hash >> 32) % 3);
        let report = run_with(gpus, 5, Some((rank, step, "desync")), &monitor);
        let case = format!("{gpus} GPUs, rank {rank}, step {step}");
        let faults = &report.faults;
        assert_eq!(faults.injected.get(&FaultKind::Desync), Some(&1), "{case}");
        assert_eq!(
            faults.detected.keys().collect::<Vec<_>>(),
            [&Detector::Watchdog],
            "{case}"
        );
        let [flight] = faults.flight_recorder.as_slice() else {
            panic!("{case}: {:?}", faults.flight_recorder);
        };
        assert_eq!(flight.diagnosis.verdict, Verdict::Desync, "{case}");
        assert_eq!(flight.diagnosis.mismatched_ranks, vec![rank], "{case}");
        assert_eq!(flight.diagnosis.missing_count, 0, "{case}");
        assert_eq!(flight.named_injected_rank, Some(true), "{case}");
        assert_eq!(report.steps_completed, 5, "{case}");
        assert_eq!(
            report.param_digest,
            run(gpus, 5, None).param_digest,
            "{case}"
        );
    }
}

/// The desync check (PyTorch's debug mode) compares each collective's fingerprint across its
/// members before it runs: every kind of desync is found within the exchange after the last
/// member reached the collective, never by the watchdog, and the recorder says what the rank
/// issued instead; a seeded sweep of kinds, ranks, steps and sizes up to 4,096 GPUs.
#[test]
fn the_desync_check_finds_every_kind_at_once_and_the_recorder_says_what_differs() {
    let check = ["recovery.desync_check=true"];
    for (i, gpus) in [8usize, 64, 512, 4096].into_iter().enumerate() {
        for (k, kind) in ["desync-sequence", "desync-size", "desync-op"]
            .iter()
            .enumerate()
        {
            let hash = mix64(0xc4ec ^ (i as u64) << 8 ^ k as u64);
            let (rank, step) = ((hash % gpus as u64) as usize, 1 + (hash >> 32) % 2);
            let report = run_with(gpus, 4, Some((rank, step, kind)), &check);
            let case = format!("{gpus} GPUs, rank {rank}, step {step}, {kind}");
            let faults = &report.faults;
            assert_eq!(
                faults.detected.keys().collect::<Vec<_>>(),
                [&Detector::DesyncCheck],
                "{case}"
            );
            let [flight] = faults.flight_recorder.as_slice() else {
                panic!("{case}: {:?}", faults.flight_recorder);
            };
            let d = &flight.diagnosis;
            assert_eq!(
                (d.verdict, &d.mismatched_ranks),
                (Verdict::Desync, &vec![rank])
            );
            assert_eq!(flight.named_injected_rank, Some(true), "{case}");
            // Within a second of the injection: the peers' compute, then the exchange.
            let latency = d.at_ns - flight.injected.expect("injected").at_ns;
            assert!(latency < 1_000_000_000, "{case}: {latency} ns");
            let (want, got) = (
                d.collective.as_ref().unwrap(),
                d.issued_instead.as_ref().unwrap(),
            );
            let differs = |c: &Collective| (c.op_id, c.input_bytes, c.op.clone());
            let expected = match *kind {
                "desync-sequence" => (want.op_id + 1, want.input_bytes, want.op.clone()),
                "desync-size" => (want.op_id, want.input_bytes * 2, want.op.clone()),
                _ => (want.op_id, want.input_bytes, "nccl:all_gather".into()),
            };
            assert_eq!(differs(got), expected, "{case}");
            assert_eq!(report.steps_completed, 4, "{case}");
        }
    }
}

/// A hung rank never posts its fingerprint, so the check cannot see a hang (the watchdog
/// does); and a fault-free run with the check costs every collective its exchange (six
/// rounds of 25 us at 64 GPUs), with the same parameters.
#[test]
fn the_desync_check_misses_hangs_and_costs_every_collective_its_exchange() {
    let check = ["recovery.desync_check=true"];
    let hung = run_with(64, 6, Some((9, 3, "kernel")), &check);
    assert_eq!(
        hung.faults.detected.keys().collect::<Vec<_>>(),
        [&Detector::Watchdog]
    );
    let (plain, checked) = (run(64, 6, None), run_with(64, 6, None, &check));
    assert_eq!(plain.param_digest, checked.param_digest);
    assert!(
        checked.faults.detected.is_empty(),
        "{:?}",
        checked.faults.detected
    );
    let cost = checked.lost_time_ns_by_cause[&LostCause::DesyncCheck];
    assert!(cost > 0 && cost % 150_000 == 0, "{cost} ns");
    assert!(checked.model_time_ns > plain.model_time_ns);
    assert_eq!(
        plain.lost_time_ns_by_cause.get(&LostCause::DesyncCheck),
        None
    );
}

/// Hangs and desyncs from rates: each arrival picks a rank at random, which hangs or desyncs
/// at the next step it begins; every one is detected by the detector of its kind and named
/// by the recorder, the job ends with the fault-free parameters, and the same seed gives the
/// same run. `without_faults` (the swarm's and `--compare`'s reference) has none of them.
#[test]
fn hangs_and_desyncs_from_rates_are_each_detected_and_named() {
    let text = "[cluster]\ngpus = 512\ngpus_per_node = 8\n\
         [job]\nsteps = 60\nproxy_elems = 16\nmodel_params = 8e9\n\
         [checkpoint]\ninterval = 5\n\
         [recovery]\nrestart_time = \"1min\"\nheartbeat_interval = \"5s\"\n\
         collective_timeout = \"2min\"\nprogress_timeout = \"30s\"\ndesync_check = true\n\
         [faults.rates]\nhangs_per_1000_node_days = 10000\ndesyncs_per_1000_node_days = 10000\n";
    let scenario = load_str("gray", "<test>", text, &[]).unwrap();
    let report = run_scenario(&scenario).unwrap();
    let faults = &report.faults;
    let injected: u64 = faults.injected.values().sum();
    assert!(injected >= 2, "{:?}", faults.injected);
    assert_eq!(
        faults.flight_recorder.len() as u64,
        injected,
        "one stop each"
    );
    for flight in &faults.flight_recorder {
        let kind = flight.injected.expect("injected").kind;
        assert_eq!(flight.named_injected_rank, Some(true), "{flight:?}");
        let expected = match kind {
            FaultKind::Hang => Verdict::Hang,
            _ => Verdict::Desync,
        };
        assert_eq!(flight.diagnosis.verdict, expected, "{flight:?}");
    }
    // Hangs by the progress monitor, desyncs by the check; never the heartbeats.
    let by = |d: Detector| faults.detected.get(&d).copied().unwrap_or(0);
    assert_eq!(by(Detector::Heartbeat) + by(Detector::Watchdog), 0);
    let hangs = faults.injected.get(&FaultKind::Hang).copied().unwrap_or(0);
    let desyncs = faults
        .injected
        .get(&FaultKind::Desync)
        .copied()
        .unwrap_or(0);
    assert_eq!(
        (by(Detector::ProgressMonitor), by(Detector::DesyncCheck)),
        (hangs, desyncs)
    );
    let clean = run_scenario(&scenario.clone().without_faults()).unwrap();
    assert!(
        clean.faults.injected.is_empty(),
        "{:?}",
        clean.faults.injected
    );
    assert_eq!(report.param_digest, clean.param_digest);
    assert_eq!(
        run_scenario(&scenario).unwrap().trace_digest,
        report.trace_digest
    );
    // A rate without a detector that could see it is refused, naming the key.
    let unwatched = text.replace(
        "collective_timeout = \"2min\"\nprogress_timeout = \"30s\"\n",
        "collective_timeout = \"0s\"\n",
    );
    let err = load_str("gray", "<test>", &unwatched, &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("faults.rates.hangs_per_1000_node_days"),
        "{err}"
    );
}
