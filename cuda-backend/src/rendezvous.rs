//! Bootstrap for the NCCL transport: one rank per process, told who it is by the usual RANK,
//! WORLD_SIZE, MASTER_ADDR and MASTER_PORT variables. Rank 0 listens on MASTER_ADDR:MASTER_PORT
//! and hands every other rank the NCCL unique id over TCP; nothing here touches CUDA, so it is
//! tested over loopback on any machine.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of an NCCL unique id (`ncclUniqueId`).
pub const ID_LEN: usize = 128;
const HELLO_MAGIC: &[u8; 8] = b"FLTRDV01";

/// Who this process is, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapEnv {
    pub rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// LOCAL_RANK if set, else RANK: picks the GPU on a node.
    pub local_rank: usize,
}

/// A variable that is missing or does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    pub variable: &'static str,
    pub message: String,
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for EnvError {}

impl BootstrapEnv {
    /// Reads the variables through `lookup` (`std::env::var` in the program, a table in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<BootstrapEnv, EnvError> {
        let number = |variable: &'static str| -> Result<usize, EnvError> {
            let text = lookup(variable).ok_or_else(|| EnvError {
                variable,
                message: "not set".into(),
            })?;
            text.trim().parse::<usize>().map_err(|_| EnvError {
                variable,
                message: format!("{text:?} is not a non-negative integer"),
            })
        };
        let rank = number("RANK")?;
        let world_size = number("WORLD_SIZE")?;
        if world_size == 0 {
            return Err(EnvError {
                variable: "WORLD_SIZE",
                message: "must be at least 1".into(),
            });
        }
        if rank >= world_size {
            return Err(EnvError {
                variable: "RANK",
                message: format!("{rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let master_addr = lookup("MASTER_ADDR").ok_or_else(|| EnvError {
            variable: "MASTER_ADDR",
            message: "not set".into(),
        })?;
        let port = number("MASTER_PORT")?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| EnvError {
                variable: "MASTER_PORT",
                message: format!("{port} is not a TCP port (1 to 65535)"),
            })?;
        let local_rank = match lookup("LOCAL_RANK") {
            Some(_) => number("LOCAL_RANK")?,
            None => rank,
        };
        Ok(BootstrapEnv {
            rank,
            world_size,
            master_addr,
            master_port,
            local_rank,
        })
    }

    pub fn from_process_env() -> Result<BootstrapEnv, EnvError> {
        BootstrapEnv::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Why the rendezvous failed.
#[derive(Debug)]
pub enum RendezvousError {
    Io(std::io::Error),
    /// Nobody answered (or not every rank arrived) within the deadline.
    Timeout {
        waited: Duration,
    },
    /// A peer spoke another protocol, or disagreed about the world size.
    Protocol(String),
    /// Two processes claimed the same rank.
    DuplicateRank {
        rank: usize,
    },
}

impl std::fmt::Display for RendezvousError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RendezvousError::Io(e) => write!(f, "rendezvous: {e}"),
            RendezvousError::Timeout { waited } => {
                write!(f, "rendezvous: not every rank arrived within {waited:?}")
            }
            RendezvousError::Protocol(m) => write!(f, "rendezvous: {m}"),
            RendezvousError::DuplicateRank { rank } => {
                write!(f, "rendezvous: two processes claim rank {rank}")
            }
        }
    }
}

impl std::error::Error for RendezvousError {}

impl From<std::io::Error> for RendezvousError {
    fn from(e: std::io::Error) -> Self {
        RendezvousError::Io(e)
    }
}

fn hello(rank: usize, world_size: usize) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(HELLO_MAGIC);
    bytes[8..12].copy_from_slice(&(rank as u32).to_le_bytes());
    bytes[12..16].copy_from_slice(&(world_size as u32).to_le_bytes());
    bytes
}

/// Rank 0's side: accepts the other `world_size - 1` ranks on `listener`, checks each one's
/// hello, and once all have arrived sends each the id. Sending only after everyone arrived
/// makes the rendezvous also a barrier.
pub async fn serve(
    listener: TcpListener,
    world_size: usize,
    id: [u8; ID_LEN],
    deadline: Duration,
) -> Result<(), RendezvousError> {
    let accept_all = async {
        let mut peers: Vec<Option<TcpStream>> = (0..world_size).map(|_| None).collect();
        for _ in 1..world_size {
            let (mut stream, _) = listener.accept().await?;
            let mut bytes = [0u8; 16];
            stream.read_exact(&mut bytes).await?;
            if &bytes[..8] != HELLO_MAGIC {
                return Err(RendezvousError::Protocol("a peer sent a bad hello".into()));
            }
            let rank = u32::from_le_bytes(bytes[8..12].try_into().expect("4")) as usize;
            let their_world = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
            if their_world != world_size {
                return Err(RendezvousError::Protocol(format!(
                    "rank {rank} says WORLD_SIZE is {their_world}, rank 0 says {world_size}"
                )));
            }
            if rank == 0 || rank >= world_size {
                return Err(RendezvousError::Protocol(format!(
                    "a peer claims rank {rank} in a world of {world_size}"
                )));
            }
            if peers[rank].is_some() {
                return Err(RendezvousError::DuplicateRank { rank });
            }
            peers[rank] = Some(stream);
        }
        for stream in peers.iter_mut().flatten() {
            stream.write_all(&id).await?;
            stream.flush().await?;
        }
        Ok(())
    };
    tokio::time::timeout(deadline, accept_all)
        .await
        .map_err(|_| RendezvousError::Timeout { waited: deadline })?
}

/// Another rank's side: connects to rank 0 (retrying until it listens), says who it is, and
/// waits for the id.
pub async fn join(
    addr: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    deadline: Duration,
) -> Result<[u8; ID_LEN], RendezvousError> {
    let attempt = async {
        let mut stream = loop {
            match TcpStream::connect((addr, port)).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        stream.write_all(&hello(rank, world_size)).await?;
        let mut id = [0u8; ID_LEN];
        stream.read_exact(&mut id).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                RendezvousError::Protocol(
                    "rank 0 closed the connection before sending the id".into(),
                )
            } else {
                RendezvousError::Io(e)
            }
        })?;
        Ok(id)
    };
    tokio::time::timeout(deadline, attempt)
        .await
        .map_err(|_| RendezvousError::Timeout { waited: deadline })?
}

/// The whole bootstrap for this process: rank 0 makes the id with `make_id` and serves it; the
/// others fetch it. Runs its own small single-threaded runtime.
pub fn share_id(
    env: &BootstrapEnv,
    make_id: impl FnOnce() -> [u8; ID_LEN],
    deadline: Duration,
) -> Result<[u8; ID_LEN], RendezvousError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        if env.rank == 0 {
            let id = make_id();
            let listener = TcpListener::bind((env.master_addr.as_str(), env.master_port)).await?;
            serve(listener, env.world_size, id, deadline).await?;
            Ok(id)
        } else {
            join(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                deadline,
            )
            .await
        }
    })
}
