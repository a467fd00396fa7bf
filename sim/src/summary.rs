//! The human summaries of reports, as `Display`: what `faultline run`, `collective` and `plan`
//! print, kept in the library beside the reports so that every program (and test) renders
//! them alike. The JSON forms are the reports' `Serialize`.

use std::fmt::{self, Display, Formatter};

use crate::books::by_name;
use crate::plan::report::PlanReport;
use crate::run::{CollectiveReport, RunReport};
use crate::units::format_duration_ns as duration;

/// A run's summary, from the cluster to the checkpoint atomicity verdict (the program adds
/// the wall time, which no report digest covers).
impl Display for RunReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.fmt_job(f)?;
        self.fmt_layout(f)?;
        self.fmt_faults(f)?;
        self.fmt_blast_radius(f)?;
        self.fmt_degradations(f)?;
        writeln!(f, "goodput: {:.2}%", 100.0 * self.goodput)?;
        if let Some(first) = self.atomicity_violations.first() {
            writeln!(
                f,
                "checkpoint atomicity: BROKEN, {} read(s); first at {}: {}",
                self.atomicity_violation_count,
                duration(first.at_ns),
                first.what
            )?;
        }
        Ok(())
    }
}

impl RunReport {
    /// The cluster, the steps, the loss, the fabric's counters and the digests.
    fn fmt_job(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster: {} GPUs, {} per node; executor {}; collective {}",
            self.gpus, self.gpus_per_node, self.executor, self.collective
        )?;
        writeln!(
            f,
            "steps: {}/{} in {} of model time ({} per step)",
            self.steps_completed,
            self.steps_requested,
            duration(self.model_time_ns),
            duration(self.model_time_ns / self.steps_completed.max(1)),
        )?;
        writeln!(
            f,
            "loss: {:.6} at step 0, {:.6} at the last step",
            self.first_loss, self.final_loss
        )?;
        writeln!(
            f,
            "fabric: {} messages, {:.3} TB modelled, {} events",
            self.messages,
            self.modelled_bytes as f64 / 1e12,
            self.events_fired
        )?;
        writeln!(
            f,
            "param_digest: {}  trace_digest: {}",
            self.param_digest, self.trace_digest
        )?;
        let agree = if self.replicas_agree { "yes" } else { "NO" };
        writeln!(f, "replicas agree: {agree}")
    }

    /// A layout job's shape, its measured bubble and where rank 0's step time went.
    fn fmt_layout(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Some(l) = &self.layout else {
            return Ok(());
        };
        writeln!(
            f,
            "layout: tp {} x pp {} x dp {} ({}), dp sharding {}, {} over {} micro-batches",
            l.tp, l.pp, l.dp, l.order, l.dp_sharding, l.schedule, l.micro_batches
        )?;
        writeln!(
            f,
            "pipeline bubble: {:.1}% of rank 0's pipeline span ({:.1}% with equal stages and \
             free communication)",
            100.0 * l.bubble_fraction,
            100.0 * l.ideal_bubble_fraction
        )?;
        let t = &l.time_split_ns;
        let per_step = |ns: u64| duration(ns / self.steps_completed.max(1));
        writeln!(
            f,
            "rank 0's time per step: compute {}, TP {}, PP {}, DP {}",
            per_step(t.compute),
            per_step(t.tp),
            per_step(t.pp),
            per_step(t.dp)
        )?;
        let kind = |k: &crate::run::KindTraffic| {
            format!("{} ({:.3} TB)", k.messages, k.modelled_bytes as f64 / 1e12)
        };
        let m = &l.traffic;
        writeln!(
            f,
            "messages: TP {}, PP {}, DP {}",
            kind(&m.tp),
            kind(&m.pp),
            kind(&m.dp)
        )
    }

    /// The blast radius: GPU-time idle by cause, and each fault's groups and idle GPUs.
    fn fmt_blast_radius(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let b = &self.blast_radius;
        if b.is_empty() {
            return Ok(());
        }
        let by_cause: Vec<String> = b
            .gpus_idle_seconds_by_cause
            .iter()
            .map(|(cause, s)| format!("{cause} {s:.1}"))
            .collect();
        let groups = if self.layout.is_some() {
            format!(
                "{} replica(s) lost, {} pipeline(s) stalled, {} TP group(s) stopped",
                b.replicas_lost, b.pipelines_stalled, b.tp_groups_stopped
            )
        } else {
            format!("{} replica(s) lost", b.replicas_lost)
        };
        writeln!(
            f,
            "blast radius: {:.1} GPU-seconds idle ({}); {groups}",
            b.gpus_idle_seconds,
            by_cause.join(", "),
        )?;
        for x in b.faults.iter().take(8) {
            let groups = if x.tp_groups.is_empty() {
                format!("node(s) {:?}", x.nodes)
            } else {
                format!(
                    "TP groups {:?}, pipelines {:?}, DP replicas {:?} ({} GPUs each)",
                    x.tp_groups, x.pipelines, x.dp_replicas, x.replica_gpus
                )
            };
            let out = if x.gpus_out > 0 {
                format!(", then {} out for {}", x.gpus_out, duration(x.out_ns))
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {} at {} ({}): {groups}; {} GPUs idle for {}{out}",
                x.cause,
                duration(x.at_ns),
                x.recovery,
                x.gpus_stopped,
                duration(x.stopped_ns),
            )?;
        }
        Ok(())
    }

    /// Faults injected and detected, the SDC books per kind, escapes and time lost.
    fn fmt_faults(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "faults injected: {:?}; detected by: {:?}; recoveries: {}",
            by_name(&self.faults.injected),
            by_name(&self.faults.detected),
            self.recoveries
        )?;
        for (kind, k) in &self.faults.sdc {
            writeln!(
                f,
                "{kind}: {} injected, {} detected, {} escaped; detection latency mean {} max {}; \
                 time lost {}",
                k.injected,
                k.detected,
                k.escaped,
                duration(k.detection_latency_ns_mean),
                duration(k.detection_latency_ns_max),
                duration(k.lost_time_ns),
            )?;
        }
        for escape in &self.faults.escaped {
            writeln!(
                f,
                "ESCAPED: {} on GPU {} entered at step {} (attempt {})",
                escape.kind, escape.gpu, escape.step_entered, escape.attempt
            )?;
        }
        if !self.faults.quarantined_gpus.is_empty() {
            writeln!(f, "quarantined GPUs: {:?}", self.faults.quarantined_gpus)?;
        }
        if self.checkpoint_snapshots > 0 {
            writeln!(
                f,
                "checkpoints: {} committed, {} lost in flight (persisting when a failure \
                 struck), {} restore fallback(s); restores by tier: {:?}; spares used: {}",
                self.checkpoints_committed,
                self.checkpoints_lost_in_flight,
                self.restore_fallbacks,
                by_name(&self.restores_by_tier),
                self.spares_used
            )?;
        }
        if !self.lost_time_ns_by_cause.is_empty() {
            let lost: Vec<String> = (self.lost_time_ns_by_cause.iter())
                .map(|(cause, ns)| format!("{cause} {}", duration(*ns)))
                .collect();
            writeln!(f, "time lost: {}", lost.join(", "))?;
        }
        Ok(())
    }

    /// Link flaps, stragglers, fail-slow links and per-replica recovery, where the run had
    /// them.
    fn fmt_degradations(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(flaps) = &self.link_flaps {
            writeln!(
                f,
                "link flaps ({} transport): {} flaps; {} transfers rerouted, {} retried \
                 ({} retries, {}), {} lost; {} detections, latency max {}",
                flaps.transport,
                flaps.flaps,
                flaps.transfers_rerouted,
                flaps.transfers_retried,
                flaps.retry_attempts,
                duration(flaps.retry_time_ns),
                flaps.transfers_lost,
                flaps.detections,
                duration(flaps.detection_latency_ns_max),
            )?;
        }
        if let Some(s) = &self.stragglers {
            let flagged: Vec<String> = (s.flagged.iter())
                .map(|f| format!("rank {} at step {} (score {:.2})", f.rank, f.step, f.score))
                .collect();
            writeln!(
                f,
                "stragglers: {} injected; max score {:.2}; flagged: {}; evicted {}; step time \
                 p50 {}, max {}",
                s.slowdowns_injected,
                s.max_score,
                if flagged.is_empty() {
                    "none".to_string()
                } else {
                    flagged.join(", ")
                },
                s.stragglers_evicted,
                duration(s.step_time_ns_p50),
                duration(s.step_time_ns_max),
            )?;
        }
        if let Some(d) = &self.degrades {
            fmt_fail_slow(f, d)?;
        }
        if let Some(p) = &self.per_replica {
            writeln!(
                f,
                "per-replica: {} node(s) dropped, {} re-admitted, {} regroup(s), {} fallback \
                 restart(s); {} step(s) degraded, at least {} of {} GPUs training; {} node(s) \
                 still out at the end",
                p.drops,
                p.readmissions,
                p.regroups,
                p.fallback_restarts,
                p.degraded_steps,
                p.min_members,
                self.gpus,
                p.dropped_at_end,
            )?;
        }
        Ok(())
    }
}

impl Display for CollectiveReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "faultline collective: {} {} on {} GPUs ({} per node), {} elems, {} modelled bytes, \
             seed {}",
            self.algo,
            self.op,
            self.gpus,
            self.gpus_per_node,
            self.elems,
            self.modelled_bytes,
            self.seed
        )?;
        writeln!(
            f,
            "executor {}; {} routing; {} ring order; {} messages; model time {}",
            self.executor,
            self.routing,
            self.ring_order,
            self.messages,
            duration(self.model_time_ns)
        )?;
        let exact = if self.exact {
            "yes".to_string()
        } else {
            format!("NO, ranks {:?}", self.mismatched_ranks)
        };
        writeln!(f, "exact: {exact}")?;
        writeln!(
            f,
            "trace_digest: {}  wall: {} ms",
            self.trace_digest, self.wall_ms
        )
    }
}

/// A plan's summary: the sweep as a table, the best point, interruptions, time lost, and the
/// analytic figures beside them.
impl Display for PlanReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster: {} GPUs ({} nodes); horizon {:.1} days",
            self.gpus,
            self.nodes,
            self.horizon_s / 86_400.0
        )?;
        self.fmt_sweep(f)?;
        self.fmt_best(f)
    }
}

fn minutes(s: f64) -> f64 {
    s / 60.0
}

impl PlanReport {
    /// One row per sweep point: its settings, ETTR with its interval, and the analytic ETTRs.
    fn fmt_sweep(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = (self.sweep.iter())
            .map(|p| {
                if p.settings.is_empty() {
                    format!("interval {:.1} min", minutes(p.checkpoint_interval_s))
                } else {
                    let settings = p.settings.iter().map(|(k, v)| format!("{k}={v}"));
                    settings.collect::<Vec<_>>().join(" ")
                }
            })
            .collect();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        writeln!(
            f,
            "{:<width$} {:>8} {:>19} {:>9} {:>9} {:>9} {:>9}",
            "point", "ETTR", "95% CI", "interrupt", "Daly ETTR", "Kokolis", "GPUs idle"
        )?;
        for (p, name) in self.sweep.iter().zip(&names) {
            writeln!(
                f,
                "{:<width$} {:>8.4} [{:>8.4}, {:>8.4}] {:>9.1} {:>9.4} {:>9.4} {:>9}",
                name,
                p.ettr_mean,
                p.ettr_ci95[0],
                p.ettr_ci95[1],
                p.interruptions_mean,
                p.daly_ettr,
                p.kokolis_ettr,
                p.gpus_idled_per_failure
            )?;
        }
        Ok(())
    }

    /// The best point, its interruptions and lost time, and Young's and Daly's intervals.
    fn fmt_best(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "best: ETTR {:.4} [{:.4}, {:.4}] at checkpoint interval {:.1} min {:?}",
            self.ettr_mean,
            self.ettr_ci95[0],
            self.ettr_ci95[1],
            minutes(self.best_checkpoint_interval_s),
            self.best_settings
        )?;
        writeln!(
            f,
            "interruptions: {:.1} [{:.1}, {:.1}] unexpected, {:.1} planned",
            self.interruptions_mean,
            self.interruptions_ci95[0],
            self.interruptions_ci95[1],
            self.planned_interruptions_mean
        )?;
        let lost: Vec<String> = (self.lost_s_by_cause.iter())
            .map(|(cause, s)| format!("{cause} {:.1} h", s / 3600.0))
            .collect();
        writeln!(f, "time lost by cause (mean): {}", lost.join(", "))?;
        if self.job_mtbf_s > 0.0 {
            writeln!(
                f,
                "analytic, beside: job MTBF {:.2} h; Young {:.1} min; Daly {:.1} min",
                self.job_mtbf_s / 3600.0,
                minutes(self.young_interval_s),
                minutes(self.daly_interval_s)
            )
        } else {
            writeln!(
                f,
                "analytic, beside: no failures configured, so no Young or Daly interval"
            )
        }
    }
}

/// Fail-slow links: the episodes, the retransmissions, step times inside and outside them, and
/// which detector (if any) fired while one was in force.
fn fmt_fail_slow(f: &mut Formatter<'_>, d: &crate::world::DegradeReport) -> fmt::Result {
    let seen: Vec<String> = (d.detections.iter())
        .map(|x| format!("{} after {}", x.detector, duration(x.latency_ns)))
        .collect();
    writeln!(
        f,
        "fail-slow: {} degrades ({} ended); {} retransmissions of {} transfers (+{}); step time \
         p50 {} healthy, {} degraded ({} steps, max {}); seen by: {}",
        d.degrades_injected,
        d.degrades_ended,
        d.retransmissions,
        d.transfers_retransmitted,
        duration(d.retransmission_delay_ns),
        duration(d.step_time_ns_p50_healthy),
        duration(d.step_time_ns_p50_degraded),
        d.steps_degraded,
        duration(d.step_time_ns_max_degraded),
        if seen.is_empty() {
            "no detector (step time only)".to_string()
        } else {
            seen.join(", ")
        },
    )
}
