//! Data-parallel training: several processes (ranks) train one model, each on its share
//! of every step's micro-batches, and sum their gradients before the update.
//!
//! Why this is exact: a step's micro-batch `m` is drawn from `(seed, step, m)` alone
//! (see the crate docs), so rank `r` of `W` takes micro-batches `r, r+W, r+2W, …` of the
//! step's `train.grad_accum`, and the all-reduced sum of the ranks' gradients is the
//! gradient one process would have accumulated over all of them (up to the order of the
//! float additions). Every rank then applies the same AdamW update to the same weights,
//! so the ranks stay identical without ever exchanging weights.
//!
//! A [`Communicator`] is the one thing the trainer needs: an element-wise sum over the
//! ranks that hands every rank the same bits. [`LocalGroup`] joins threads of one process
//! (tests, and a CPU machine's sockets); [`TcpGroup`] joins processes over TCP, launched as
//! torchrun and Slurm launch PyTorch jobs (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`). A GPU build would add an NCCL communicator behind the same trait.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// An all-reduce over the ranks of one training job.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces `data` on every rank by the element-wise sum of all ranks' `data`, added
    /// in rank order so that every rank receives bit-identical values.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()>;
}

/// Sums `parts` (one slice per rank, in rank order) into `out`.
fn sum_in_rank_order<'a>(out: &mut [f32], parts: impl IntoIterator<Item = &'a [f32]>) {
    out.iter_mut().for_each(|x| *x = 0.0);
    for part in parts {
        out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
    }
}

struct LocalShared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

/// Ranks that are threads of this process, sharing memory.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<LocalShared>,
}

impl LocalGroup {
    /// `world` members, one per thread; member `r` is rank `r`.
    pub fn new(world: usize) -> Vec<LocalGroup> {
        assert!(world >= 1, "a group has at least one rank");
        let shared = Arc::new(LocalShared { slots: Mutex::new(vec![Vec::new(); world]), barrier: Barrier::new(world) });
        (0..world).map(|rank| LocalGroup { rank, shared: shared.clone() }).collect()
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.slots.lock().expect("group lock").len()
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        self.shared.slots.lock().expect("group lock")[self.rank] = data.to_vec();
        // Everyone has written before anyone reads ...
        self.shared.barrier.wait();
        {
            let slots = self.shared.slots.lock().expect("group lock");
            ensure!(slots.iter().all(|s| s.len() == data.len()), "all-reduce: the ranks passed buffers of different lengths");
            sum_in_rank_order(data, slots.iter().map(|s| s.as_slice()));
        }
        // ... and everyone has read before anyone writes the next round.
        self.shared.barrier.wait();
        Ok(())
    }
}

/// Ranks that are processes, possibly on several machines: rank 0 listens, the others
/// connect to it; an all-reduce sends every rank's buffer to rank 0, which adds them in
/// rank order and sends the sum back (reduce, then broadcast).
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1..world, in rank order. Others: the stream to rank 0.
    peers: Vec<TcpStream>,
    buf: Vec<u8>,
}

const HELLO: &[u8; 8] = b"ferrolm1";

impl TcpGroup {
    /// The group described by torchrun's / Slurm's environment: `RANK` (or `SLURM_PROCID`),
    /// `WORLD_SIZE` (or `SLURM_NTASKS`), `MASTER_ADDR` (default 127.0.0.1), `MASTER_PORT`
    /// (default 29500). `None` when no world size above 1 is set.
    pub fn from_env() -> Result<Option<TcpGroup>> {
        let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok());
        let Some(world) = var(&["WORLD_SIZE", "SLURM_NTASKS"]) else { return Ok(None) };
        let world: usize = world.trim().parse().with_context(|| format!("WORLD_SIZE={world:?} is not a number"))?;
        if world <= 1 {
            return Ok(None);
        }
        let rank = var(&["RANK", "SLURM_PROCID"]).context("WORLD_SIZE is set but RANK is not")?;
        let rank: usize = rank.trim().parse().with_context(|| format!("RANK={rank:?} is not a number"))?;
        let addr = var(&["MASTER_ADDR"]).unwrap_or_else(|| "127.0.0.1".into());
        let port = var(&["MASTER_PORT"]).unwrap_or_else(|| "29500".into());
        let endpoint = format!("{addr}:{port}");
        let group = if rank == 0 {
            let listener = TcpListener::bind(&endpoint).with_context(|| format!("rank 0 listening on MASTER_ADDR:MASTER_PORT = {endpoint}"))?;
            Self::accept(listener, world, Duration::from_secs(300))?
        } else {
            Self::connect(&endpoint, rank, world, Duration::from_secs(300))?
        };
        Ok(Some(group))
    }

    /// Rank 0: waits (up to `timeout`) for ranks 1..world to connect on `listener`.
    pub fn accept(listener: TcpListener, world: usize, timeout: Duration) -> Result<TcpGroup> {
        ensure!(world >= 2, "a TCP group needs at least two ranks");
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while peers.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, from)) => {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    let mut hello = [0u8; 16];
                    s.read_exact(&mut hello).with_context(|| format!("handshake from {from}"))?;
                    ensure!(&hello[..8] == HELLO, "{from} is not a ferrolm rank (bad handshake)");
                    let r = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
                    let w = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
                    ensure!(w == world, "rank {r} at {from} was started with WORLD_SIZE={w}, rank 0 with {world}");
                    ensure!((1..world).contains(&r), "{from} claims rank {r}, outside 1..{world}");
                    ensure!(peers[r - 1].is_none(), "two processes claim rank {r}");
                    peers[r - 1] = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<usize> = peers.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i + 1).collect();
                        bail!("rank 0 waited {timeout:?} and ranks {missing:?} never connected");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).context("rank 0 accepting ranks"),
            }
        }
        Ok(TcpGroup { rank: 0, world, peers: peers.into_iter().map(|p| p.expect("all connected")).collect(), buf: Vec::new() })
    }

    /// Rank `rank` > 0: connects to rank 0 at `endpoint`, retrying until `timeout` (rank 0
    /// may start later).
    pub fn connect(endpoint: &str, rank: usize, world: usize, timeout: Duration) -> Result<TcpGroup> {
        ensure!(rank >= 1 && rank < world, "rank {rank} is outside 1..{world}");
        let deadline = Instant::now() + timeout;
        let addrs: Vec<_> = endpoint.to_socket_addrs().with_context(|| format!("resolving MASTER_ADDR:MASTER_PORT = {endpoint}"))?.collect();
        let mut stream = loop {
            match addrs.iter().find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(5)).ok()) {
                Some(s) => break s,
                None if Instant::now() > deadline => bail!("rank {rank} could not reach rank 0 at {endpoint} within {timeout:?}"),
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_nodelay(true)?;
        let mut hello = HELLO.to_vec();
        hello.extend((rank as u32).to_le_bytes());
        hello.extend((world as u32).to_le_bytes());
        stream.write_all(&hello)?;
        Ok(TcpGroup { rank, world, peers: vec![stream], buf: Vec::new() })
    }
}

fn send(stream: &mut TcpStream, data: &[f32], buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    buf.extend((data.len() as u64).to_le_bytes());
    buf.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    stream.write_all(buf)?;
    Ok(())
}

fn recv(stream: &mut TcpStream, out: &mut [f32], buf: &mut Vec<u8>) -> Result<()> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len) as usize;
    ensure!(n == out.len(), "all-reduce: a rank sent {n} values, this rank has {}", out.len());
    buf.resize(n * 4, 0);
    stream.read_exact(buf)?;
    for (o, b) in out.iter_mut().zip(buf.chunks_exact(4)) {
        *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
    Ok(())
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        let buf = &mut self.buf;
        if self.rank == 0 {
            let mut parts = vec![data.to_vec()];
            for (i, peer) in self.peers.iter_mut().enumerate() {
                let mut part = vec![0f32; data.len()];
                recv(peer, &mut part, buf).with_context(|| format!("all-reduce: receiving from rank {}", i + 1))?;
                parts.push(part);
            }
            sum_in_rank_order(data, parts.iter().map(|p| p.as_slice()));
            for (i, peer) in self.peers.iter_mut().enumerate() {
                send(peer, data, buf).with_context(|| format!("all-reduce: sending to rank {}", i + 1))?;
            }
        } else {
            let peer = &mut self.peers[0];
            send(peer, data, buf).context("all-reduce: sending to rank 0")?;
            recv(peer, data, buf).context("all-reduce: receiving the sum from rank 0")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_group(mut members: Vec<Box<dyn Communicator>>) {
        let handles: Vec<_> = members
            .drain(..)
            .map(|mut c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let mut rounds = Vec::new();
                    for round in 0..3 {
                        let mut v = vec![r + 1.0, 10.0 * r, round as f32];
                        c.all_reduce_sum(&mut v).unwrap();
                        rounds.push(v);
                    }
                    rounds
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let w = results.len() as f32;
        for rounds in &results {
            for (round, v) in rounds.iter().enumerate() {
                // sum of r+1 over r < w, sum of 10 r, w copies of the round
                assert_eq!(v, &vec![w * (w + 1.0) / 2.0, 10.0 * w * (w - 1.0) / 2.0, w * round as f32]);
            }
        }
    }

    #[test]
    fn local_group_sums_over_ranks_every_round() {
        check_group(LocalGroup::new(3).into_iter().map(|g| Box::new(g) as Box<dyn Communicator>).collect());
    }

    #[test]
    fn tcp_group_sums_over_ranks_every_round() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let joiners: Vec<_> = (1..3)
            .map(|r| {
                let e = endpoint.clone();
                std::thread::spawn(move || TcpGroup::connect(&e, r, 3, Duration::from_secs(20)).unwrap())
            })
            .collect();
        let root = TcpGroup::accept(listener, 3, Duration::from_secs(20)).unwrap();
        let mut members: Vec<Box<dyn Communicator>> = vec![Box::new(root)];
        members.extend(joiners.into_iter().map(|j| Box::new(j.join().unwrap()) as Box<dyn Communicator>));
        check_group(members);
    }

    #[test]
    fn a_rank_started_with_another_world_size_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let j = std::thread::spawn(move || TcpGroup::connect(&endpoint, 1, 4, Duration::from_secs(20)));
        let err = TcpGroup::accept(listener, 2, Duration::from_secs(20)).err().expect("refused").to_string();
        assert!(err.contains("WORLD_SIZE=4"), "{err}");
        let _ = j.join();
    }
}
