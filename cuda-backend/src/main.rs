//! `faultline-gpu`: runs a scenario's training job, or one collective, on real GPUs through
//! trainer-core's `Backend`, and prints a JSON report whose shared fields mean what the
//! simulator's do.
//!
//! Exit status: 0 success; 1 the run found a problem (a rank failed, replicas diverged); 2 bad
//! input; 3 no usable GPU (the message says what is missing); 70 an internal error; 75 (NCCL
//! transport) a rank failed and asks the launcher to restart the job, which then runs with
//! `--restore` (see `cuda_backend::nccl::EXIT_RESTART`); 134 (SIGABRT) the deliberate crash of
//! `--crash-at-step`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cuda_backend::device::{CudaRank, Gpu, HostRank, RankDevice};
use cuda_backend::job::{self, RunOptions};
use cuda_backend::nccl::{self, NcclPlan};
use cuda_backend::probe::{self, GpuAvailability};
use cuda_backend::rendezvous::BootstrapEnv;
use trainer_core::collectives::{Algo, Collective, Op};
use trainer_core::digest::Digest;

#[derive(Parser, Debug)]
#[command(
    name = "faultline-gpu",
    version,
    about = "faultline's training logic on real GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Every rank in this process, one CUDA stream each, device-to-device copies.
    Local,
    /// One rank per process over NCCL; RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
    Nccl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    /// CUDA through cudarc.
    Cuda,
    /// Host memory and CPU kernels: checks the runner on a machine without a GPU.
    Host,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Says whether CUDA, NVRTC, NCCL and a GPU are usable here.
    Probe,
    /// Runs a scenario's training job and prints the JSON report.
    Run(RunArgs),
    /// Runs one collective on `collective_input` and prints digests of the results.
    Collective {
        #[arg(long, default_value = "ring")]
        algo: String,
        #[arg(long, default_value = "halving-doubling")]
        inter_node_algo: String,
        #[arg(long, default_value = "all-reduce")]
        op: String,
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        #[arg(long, default_value_t = 8)]
        gpus_per_node: usize,
        #[arg(long, default_value_t = 256)]
        elems: usize,
        #[arg(long, value_enum, default_value = "cuda")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 0)]
        gpu: usize,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    scenario: PathBuf,
    /// Overrides run.seed. Real hardware has no interleaving to explore, so the numbers do
    /// not depend on it; it pairs the report with the simulator's run of the same seed.
    #[arg(long)]
    seed: Option<u64>,
    /// KEY=VALUE overrides, as for `faultline run`.
    #[arg(long = "set")]
    sets: Vec<String>,
    #[arg(long, value_enum, default_value = "local")]
    transport: Transport,
    #[arg(long, value_enum, default_value = "cuda")]
    device: DeviceChoice,
    /// The GPU the local transport puts every rank on.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// The persistent checkpoint directory (real files, atomic, checksummed); the
    /// scenario's [checkpoint] section says when (e.g. --set checkpoint.interval=10).
    /// Without it, a temporary directory removed after the run.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// The root of the per-node host-memory directories (default: under /dev/shm).
    #[arg(long)]
    host_dir: Option<PathBuf>,
    /// This process is a restart: restore the newest checkpoint that verifies, then train.
    #[arg(long)]
    restore: bool,
    /// Abort the process when a rank begins this step (after that many steps and their
    /// checkpoint work).
    #[arg(long)]
    crash_at_step: Option<u64>,
    /// Do not inject the scenario's [[faults.crash]] failures.
    #[arg(long)]
    no_faults: bool,
    #[arg(long, default_value_t = 120)]
    recv_timeout_s: u64,
}

const EXIT_PROBLEM: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_NO_GPU: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe => probe_command(),
        Command::Run(args) => run_args_command(args),
        Command::Collective {
            algo,
            inter_node_algo,
            op,
            gpus,
            gpus_per_node,
            elems,
            device,
            gpu,
        } => {
            let parsed = (
                Algo::from_name(&algo),
                Algo::from_name(&inter_node_algo).filter(|a| *a != Algo::Hierarchical),
                Op::from_name(&op),
            );
            let (Some(algo), Some(inter), Some(op)) = parsed else {
                return bad_input(format!(
                    "unknown algorithm or op: --algo {algo} --inter-node-algo {inter_node_algo} \
                     --op {op}"
                ));
            };
            if gpus == 0 || gpus_per_node == 0 {
                return bad_input("--gpus and --gpus-per-node must be at least 1");
            }
            let collective = Collective::with_inter_node(algo, inter);
            collective_command(collective, op, gpus, gpus_per_node, elems, device, gpu)
        }
    }
}

/// `faultline-gpu run`: loads the scenario, checks the flags that need each other and the
/// directories before any work, and runs.
fn run_args_command(mut args: RunArgs) -> ExitCode {
    if let Some(seed) = args.seed {
        args.sets.push(format!("run.seed={seed}"));
    }
    let settings = match job::load_scenario(&args.scenario, &args.sets) {
        Ok(s) => s,
        Err(e) => return bad_input(e),
    };
    if let Err(message) = check_run_flags(&args, &settings) {
        return bad_input(message);
    }
    let mut options = RunOptions::new();
    options.recv_timeout = Duration::from_secs(args.recv_timeout_s);
    options.restore = args.restore;
    options.crash_at_step = args.crash_at_step;
    options.inject_faults = !args.no_faults;
    options.host_dir = args.host_dir;
    options.checkpoint_dir = args.checkpoint_dir;
    if settings.crashes_not_injected > 0 {
        eprintln!(
            "faultline-gpu: {} [[faults.crash]] at a model time (`at`) not injected: real \
             hardware has no model time; only `at_step` crashes are",
            settings.crashes_not_injected
        );
    }
    if settings.hangs_not_injected > 0 {
        eprintln!(
            "faultline-gpu: {} [[faults.hang]]/[[faults.desync]] not injected: the GPU runner \
             does not make a rank hang or desync; the simulator does",
            settings.hangs_not_injected
        );
    }
    let (degrades, random) = settings.degrades_not_injected;
    if degrades > 0 || random {
        let what = match (degrades, random) {
            (0, _) => "random degrades (faults.rates.degrades_per_1000_link_days)".to_string(),
            (n, false) => format!("{n} [[faults.degrade]]"),
            (n, true) => format!("{n} [[faults.degrade]] and random degrades"),
        };
        eprintln!(
            "faultline-gpu: {what} not injected: the GPU runner cannot slow a real link; the \
             simulator does"
        );
    }
    run_command(&settings, &options, args.transport, args.device, args.gpu)
}

/// Refuses flags that need another (a restore needs checkpoints and their directory; NCCL
/// needs a shared one) and directories that cannot hold files.
fn check_run_flags(args: &RunArgs, settings: &job::JobSettings) -> Result<(), String> {
    if settings.job.layout.is_some() {
        check_layout_flags(args)?;
    }
    if args.restore && args.checkpoint_dir.is_none() {
        return Err("--restore needs --checkpoint-dir".into());
    }
    if args.restore && settings.job.checkpoint.is_none() {
        return Err(
            "--restore needs the scenario's [checkpoint] section (e.g. --set \
                    checkpoint.interval=10)"
                .into(),
        );
    }
    let shared = args.transport == Transport::Nccl && settings.job.checkpoint.is_some();
    if shared && args.checkpoint_dir.is_none() {
        return Err(
            "--transport nccl with a [checkpoint] section needs --checkpoint-dir, a \
                    directory every rank's process shares"
                .into(),
        );
    }
    for (flag, dir) in [
        ("--checkpoint-dir", &args.checkpoint_dir),
        ("--host-dir", &args.host_dir),
    ] {
        if let Some(dir) = dir {
            usable_dir(dir).map_err(|e| format!("{flag} {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// What a [parallelism] layout runs on: the local transport, from the start. Over NCCL each
/// process knows only its own shard, and the report's digest is over every shard; a layout
/// job takes no checkpoints, so there is nothing to restore.
fn check_layout_flags(args: &RunArgs) -> Result<(), String> {
    if args.transport == Transport::Nccl {
        return Err(
            "a [parallelism] layout runs on --transport local only: over NCCL each \
                    process holds one shard, and the layout's digest is over them all"
                .into(),
        );
    }
    if args.restore {
        return Err("--restore: a [parallelism] layout job takes no checkpoints to restore".into());
    }
    Ok(())
}

/// Creates `dir` if needed and checks that files can be written in it, so a checkpoint
/// directory that is a file, or one without write permission, is refused before any work
/// instead of losing every checkpoint.
fn usable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(std::io::Error::other("exists and is not a directory"));
    }
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".faultline-gpu-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

fn bad_input(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("faultline-gpu: {e}");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn no_gpu(reason: &str) -> ExitCode {
    eprintln!("faultline-gpu: no usable GPU: {reason} (use --device host to check the runner without one)");
    ExitCode::from(EXIT_NO_GPU)
}

fn probe_command() -> ExitCode {
    let cuda = probe::cuda();
    let nccl = probe::nccl_present();
    let line = serde_json::json!({
        "cuda": match &cuda {
            GpuAvailability::Present { device_count } => format!("{device_count} device(s)"),
            GpuAvailability::Absent { reason } => format!("absent: {reason}"),
        },
        "nccl": if nccl { "present" } else { "absent (cudarc looks for libnccl.so)" },
    });
    println!("{line}");
    match cuda {
        GpuAvailability::Present { .. } => ExitCode::SUCCESS,
        GpuAvailability::Absent { .. } => ExitCode::from(EXIT_NO_GPU),
    }
}

/// `count` ranks on GPU `ordinal`, one stream each.
fn cuda_ranks(ordinal: usize, count: usize) -> Result<Vec<CudaRank>, String> {
    if let GpuAvailability::Absent { reason } = probe::cuda() {
        return Err(reason);
    }
    let gpu = Gpu::open(ordinal).map_err(|e| e.to_string())?;
    (0..count)
        .map(|_| gpu.rank().map_err(|e| e.to_string()))
        .collect()
}

fn run_command(
    settings: &job::JobSettings,
    options: &RunOptions,
    transport: Transport,
    device: DeviceChoice,
    gpu: usize,
) -> ExitCode {
    let world_size = settings.placement.world_size;
    let report = match (transport, device) {
        (Transport::Local, DeviceChoice::Host) => {
            job::run_local_job(vec![HostRank; world_size], settings, options)
        }
        (Transport::Local, DeviceChoice::Cuda) => match cuda_ranks(gpu, world_size) {
            Ok(ranks) => job::run_local_job(ranks, settings, options),
            Err(reason) => return no_gpu(&reason),
        },
        (Transport::Nccl, DeviceChoice::Host) => {
            return bad_input("--transport nccl needs --device cuda")
        }
        (Transport::Nccl, DeviceChoice::Cuda) => {
            let env = match BootstrapEnv::from_process_env() {
                Ok(env) => env,
                Err(e) => return bad_input(e),
            };
            let device_count = match probe::cuda() {
                GpuAvailability::Present { device_count } => device_count,
                GpuAvailability::Absent { reason } => return no_gpu(&reason),
            };
            if !probe::nccl_present() {
                return no_gpu("NCCL (libnccl.so) is not installed or not on the library path");
            }
            let local_world_size = std::env::var("LOCAL_WORLD_SIZE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(env.world_size);
            let plan = NcclPlan {
                env,
                device_count,
                local_world_size,
            };
            if let Some(host_id) = plan.host_id() {
                if std::env::var_os("NCCL_HOSTID").is_none() {
                    // Set before NCCL starts, while this process has one thread.
                    std::env::set_var("NCCL_HOSTID", host_id);
                }
            }
            match nccl::run_nccl_job(&plan, settings, options) {
                Ok(report) if plan.env.rank == 0 => report,
                Ok(_) => return ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("faultline-gpu: rank {}: {e}", plan.env.rank);
                    return ExitCode::from(EXIT_PROBLEM);
                }
            }
        }
    };
    // Printed as the simulator prints its report (keys sorted, the same number formatting),
    // with the command line that reproduces the run.
    let mut value = serde_json::to_value(&report).expect("the report serialises");
    value["reproduce"] = serde_json::Value::String(std::env::args().collect::<Vec<_>>().join(" "));
    println!("{value}");
    if report.error.is_some() || !report.replicas_agree {
        ExitCode::from(EXIT_PROBLEM)
    } else {
        ExitCode::SUCCESS
    }
}

fn collective_command(
    collective: Collective,
    op: Op,
    gpus: usize,
    gpus_per_node: usize,
    elems: usize,
    device: DeviceChoice,
    gpu: usize,
) -> ExitCode {
    let (results, device_name) = match device {
        DeviceChoice::Host => (
            job::run_local_collective(
                vec![HostRank; gpus],
                gpus_per_node,
                collective,
                op,
                elems,
                job::collective_input,
            ),
            HostRank.describe(),
        ),
        DeviceChoice::Cuda => match cuda_ranks(gpu, gpus) {
            Ok(ranks) => {
                let name = ranks[0].describe();
                let results = job::run_local_collective(
                    ranks,
                    gpus_per_node,
                    collective,
                    op,
                    elems,
                    job::collective_input,
                );
                (results, name)
            }
            Err(reason) => return no_gpu(&reason),
        },
    };
    let mut all = Digest::new();
    let mut failed = Vec::new();
    for (rank, result) in results.iter().enumerate() {
        match result {
            Ok(data) => all.f32s(data),
            Err(e) => failed.push(format!("rank {rank}: {e}")),
        }
    }
    let rank0 = results[0].as_ref().map(|d| {
        let mut digest = Digest::new();
        digest.f32s(d);
        job::hex(digest.finish())
    });
    let line = serde_json::json!({
        "algo": collective.algo.name(),
        "op": op.name(),
        "gpus": gpus,
        "gpus_per_node": gpus_per_node,
        "elems": elems,
        "device": device_name,
        "results_digest": job::hex(all.finish()),
        "rank0_digest": rank0.ok(),
        "failed": failed,
    });
    println!("{line}");
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    }
}
