//! What this task was allocated, rather than what the machine has: a container's or a Slurm
//! step's memory limit and CPU quota. A guard that read the host's /proc/meminfo inside a
//! 4 GiB container would pass a run the OOM killer then ends (exit 137), and a scheduler
//! retries; a thread per host core inside a 2-CPU quota only queues.
//!
//! [`Allocation`] holds every input (the cgroup file system's root, the process's cgroup
//! paths, /proc/meminfo's text, the variables, the affinity), so tests inject all of them;
//! [`Allocation::of_host`] reads this process's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::MEMORY_LIMIT_ENV;

/// Where cgroup file systems are mounted; this variable replaces it (for tests, and for hosts
/// that mount them elsewhere).
pub const CGROUP_ROOT_ENV: &str = "FAULTLINE_CGROUP_ROOT";

/// The variables the allocation reads.
const READ: [&str; 4] = [
    MEMORY_LIMIT_ENV,
    CGROUP_ROOT_ENV,
    "SLURM_MEM_PER_NODE",
    "SLURM_CPUS_PER_TASK",
];

/// A v1 limit this large means none (the kernel writes 2^63 rounded down to a page).
const V1_UNLIMITED: u64 = 1 << 62;

/// The inputs: files as text, variables as a map.
#[derive(Clone, Debug, Default)]
pub struct Allocation {
    /// Where cgroup file systems are mounted: `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// /proc/self/cgroup: the process's cgroup in each hierarchy.
    pub self_cgroup: String,
    /// /proc/meminfo.
    pub meminfo: Option<String>,
    pub env: BTreeMap<String, String>,
    /// CPUs the scheduler lets this process run on (its affinity mask), when known.
    pub affinity_cpus: Option<usize>,
}

/// A memory limit and where it came from, for the refusal's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub source: String,
}

impl From<u64> for Limit {
    fn from(bytes: u64) -> Limit {
        Limit {
            bytes,
            source: String::new(),
        }
    }
}

impl Allocation {
    /// This process's allocation.
    pub fn of_host() -> Allocation {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| READ.contains(&k.as_str()))
            .collect();
        let cgroup_root = env
            .get(CGROUP_ROOT_ENV)
            .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from);
        Allocation {
            cgroup_root,
            self_cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            meminfo: std::fs::read_to_string("/proc/meminfo").ok(),
            env,
            affinity_cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
        }
    }

    /// The directories whose limits bind this process in the hierarchy that `controller`
    /// names (`None`: cgroup v2's unified one): its own cgroup and every ancestor up to the
    /// hierarchy's root. A cgroup path the mount does not show (a container sees its own
    /// cgroup as the root) leaves the root, which is then the container's.
    fn cgroup_dirs(&self, controller: Option<&str>) -> Vec<PathBuf> {
        let base = match controller {
            None => self.cgroup_root.clone(),
            Some(name) => self.cgroup_root.join(name),
        };
        let path = self.self_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match controller {
                None => controllers.is_empty(),
                Some(name) => controllers
                    .split(',')
                    .any(|c| name.split(',').any(|n| n == c)),
            };
            ours.then(|| path.trim_start_matches('/').to_string())
        });
        let mut dirs = Vec::new();
        let mut at = base.join(path.unwrap_or_default());
        while at.starts_with(&base) {
            dirs.push(at.clone());
            if !at.pop() {
                break;
            }
        }
        dirs
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The least of the limits found in `dirs`' `file`, with the file that set it.
fn least_in(dirs: &[PathBuf], file: &str, what: &str) -> Option<Limit> {
    dirs.iter()
        .filter_map(|dir| {
            let path = dir.join(file);
            let bytes = read_number(&path)?;
            Some(Limit {
                bytes,
                source: format!("{what} {}", path.display()),
            })
        })
        .filter(|l| l.bytes < V1_UNLIMITED)
        .min_by_key(|l| l.bytes)
}

/// Memory this process may use: [`MEMORY_LIMIT_ENV`] (a size such as "16GiB") when set, else
/// the least of its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, along its
/// cgroup's ancestors), a Slurm step's `SLURM_MEM_PER_NODE` (MiB) and `MemAvailable` from
/// /proc/meminfo; none known, no limit. A limit that is set but does not parse, or is zero,
/// is an error, never a check switched off.
pub fn memory_limit(alloc: &Allocation) -> Result<Option<Limit>, String> {
    if let Some(text) = alloc.var(MEMORY_LIMIT_ENV) {
        return match crate::units::parse_bytes(text) {
            Ok(bytes) if bytes > 0 => Ok(Some(Limit {
                bytes,
                source: MEMORY_LIMIT_ENV.to_string(),
            })),
            Ok(_) => Err(format!(
                "{MEMORY_LIMIT_ENV}={text}: expected a size above zero"
            )),
            Err(e) => Err(format!("{MEMORY_LIMIT_ENV}={text}: expected {e}")),
        };
    }
    let mut found = vec![
        least_in(
            &alloc.cgroup_dirs(None),
            "memory.max",
            "the cgroup's limit,",
        ),
        least_in(
            &alloc.cgroup_dirs(Some("memory")),
            "memory.limit_in_bytes",
            "the cgroup's limit,",
        ),
    ];
    if let Some(text) = alloc.var("SLURM_MEM_PER_NODE") {
        let mib: u64 = text
            .trim()
            .parse()
            .map_err(|_| format!("SLURM_MEM_PER_NODE={text}: expected a whole number of MiB"))?;
        if mib > 0 {
            found.push(Some(Limit {
                bytes: mib.saturating_mul(1 << 20),
                source: format!("the Slurm job's SLURM_MEM_PER_NODE={mib} (MiB)"),
            }));
        }
    }
    found.push(meminfo_available(alloc.meminfo.as_deref()));
    Ok(found.into_iter().flatten().min_by_key(|l| l.bytes))
}

fn meminfo_available(text: Option<&str>) -> Option<Limit> {
    let line = text?.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Limit {
        bytes: kib * 1024,
        source: "MemAvailable in /proc/meminfo".to_string(),
    })
}

/// A cgroup's CPU quota in whole CPUs, rounded up: v2 `cpu.max` ("QUOTA PERIOD", or "max"),
/// v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us` (-1: none).
fn cpu_quota(alloc: &Allocation) -> Option<(usize, String)> {
    let v2 = alloc.cgroup_dirs(None).into_iter().filter_map(|dir| {
        let path = dir.join("cpu.max");
        let text = std::fs::read_to_string(&path).ok()?;
        let mut words = text.split_whitespace();
        let quota: u64 = words.next()?.parse().ok()?;
        let period: u64 = words.next().unwrap_or("100000").parse().ok()?;
        Some((quota, period, path))
    });
    let v1 = alloc
        .cgroup_dirs(Some("cpu,cpuacct"))
        .into_iter()
        .chain(alloc.cgroup_dirs(Some("cpu")))
        .filter_map(|dir| {
            let path = dir.join("cpu.cfs_quota_us");
            let quota: i64 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            let period = read_number(&dir.join("cpu.cfs_period_us"))?;
            Some((u64::try_from(quota).ok()?, period, path))
        });
    v2.chain(v1)
        .filter(|(quota, period, _)| *quota > 0 && *period > 0)
        .map(|(quota, period, path)| {
            let cpus = quota.div_ceil(period).max(1) as usize;
            (cpus, format!("the cgroup's CPU quota, {}", path.display()))
        })
        .min_by_key(|(cpus, _)| *cpus)
}

/// The CPUs this process may keep busy, and what set the number: the least of its affinity,
/// its cgroup's CPU quota and a Slurm task's `SLURM_CPUS_PER_TASK`; at least one.
pub fn cpu_allowance(alloc: &Allocation) -> (usize, String) {
    let mut found: Vec<(usize, String)> = Vec::new();
    if let Some(n) = alloc.affinity_cpus {
        found.push((n, "the CPUs this process may run on".to_string()));
    }
    found.extend(cpu_quota(alloc));
    if let Some(n) = alloc
        .var("SLURM_CPUS_PER_TASK")
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        found.push((n, format!("SLURM_CPUS_PER_TASK={n}")));
    }
    found
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .map_or((1, "no CPU count known".to_string()), |(n, why)| {
            (n.max(1), why)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "faultline-allocation-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const MEMINFO: &str = "MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n";

    #[test]
    fn the_cgroup_v2_limit_binds_before_the_host_s_memory() {
        let root = scratch("v2");
        write(&root, "memory.max", "max\n");
        write(&root, "job/memory.max", "4294967296\n");
        write(&root, "job/step/memory.max", "max\n");
        let alloc = Allocation {
            cgroup_root: root.clone(),
            self_cgroup: "0::/job/step\n".into(),
            meminfo: Some(MEMINFO.into()),
            ..Allocation::default()
        };
        let limit = memory_limit(&alloc).unwrap().unwrap();
        assert_eq!(limit.bytes, 4 << 30);
        assert!(limit.source.contains("job/memory.max"), "{}", limit.source);
        // Without a cgroup limit, the host's available memory.
        let host = Allocation {
            cgroup_root: scratch("none"),
            meminfo: Some(MEMINFO.into()),
            ..Allocation::default()
        };
        assert_eq!(memory_limit(&host).unwrap().unwrap().bytes, 32 << 30);
        // The variable still overrides everything.
        let mut told = alloc.clone();
        told.env.insert(MEMORY_LIMIT_ENV.into(), "64GiB".into());
        assert_eq!(memory_limit(&told).unwrap().unwrap().bytes, 64 << 30);
        let message =
            super::super::check("this swarm", 5 << 30, memory_limit(&alloc).unwrap()).unwrap_err();
        assert!(
            message.contains("5.0 GiB")
                && message.contains("4.0 GiB")
                && message.contains("memory.max"),
            "{message}"
        );
    }

    #[test]
    fn cgroup_v1_and_slurm_limits_count_too() {
        let root = scratch("v1");
        write(
            &root,
            "memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(&root, "memory/slurm/memory.limit_in_bytes", "2147483648\n");
        let mut alloc = Allocation {
            cgroup_root: root,
            self_cgroup: "4:memory:/slurm/uid_0/job_1\n0::/\n".into(),
            meminfo: Some(MEMINFO.into()),
            ..Allocation::default()
        };
        let limit = memory_limit(&alloc).unwrap().unwrap();
        assert_eq!(limit.bytes, 2 << 30, "{limit:?}");
        alloc.env.insert("SLURM_MEM_PER_NODE".into(), "1024".into());
        let limit = memory_limit(&alloc).unwrap().unwrap();
        assert_eq!(limit.bytes, 1 << 30);
        assert!(limit.source.contains("SLURM_MEM_PER_NODE=1024"));
        alloc.env.insert("SLURM_MEM_PER_NODE".into(), "lots".into());
        assert!(memory_limit(&alloc)
            .unwrap_err()
            .contains("SLURM_MEM_PER_NODE=lots"));
    }

    #[test]
    fn threads_follow_the_quota_the_affinity_and_slurm() {
        let root = scratch("cpu");
        write(&root, "cpu.max", "250000 100000\n");
        let mut alloc = Allocation {
            cgroup_root: root.clone(),
            self_cgroup: "0::/\n".into(),
            affinity_cpus: Some(64),
            ..Allocation::default()
        };
        let (n, why) = cpu_allowance(&alloc);
        assert_eq!(n, 3, "{why}");
        assert!(why.contains("cpu.max"));
        alloc.env.insert("SLURM_CPUS_PER_TASK".into(), "2".into());
        assert_eq!(cpu_allowance(&alloc).0, 2);
        alloc.affinity_cpus = Some(1);
        assert_eq!(cpu_allowance(&alloc).0, 1);
        write(&root, "cpu.max", "max 100000\n");
        alloc.env.clear();
        alloc.affinity_cpus = Some(16);
        assert_eq!(cpu_allowance(&alloc).0, 16);
        let v1 = scratch("cpu-v1");
        write(&v1, "cpu,cpuacct/cpu.cfs_quota_us", "400000\n");
        write(&v1, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let alloc = Allocation {
            cgroup_root: v1,
            self_cgroup: "2:cpu,cpuacct:/\n".into(),
            affinity_cpus: Some(16),
            ..Allocation::default()
        };
        assert_eq!(cpu_allowance(&alloc).0, 4);
    }
}
