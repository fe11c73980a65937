//! [`ProcessGroup`]: PyTorch's own distributed engine (c10d), which libtorch ships, bound through
//! `csrc/c10d.cpp`: a `TCPStore` served by rank 0 for rendezvous, and `ProcessGroupGloo` (CPU
//! ranks) or `ProcessGroupNCCL` (CUDA ranks, `nccl` feature) for the collectives. The same
//! engine `torch.distributed` uses, so all-reduce results and failure behaviour are PyTorch's.
//!
//! Every rank keeps a heartbeat in the store (a counter a thread bumps each second on its own
//! connection, publishing also how many collectives the rank has entered). When a collective fails (a rank
//! died, or stalled past the timeout), the error names the ranks whose heartbeat stopped and
//! those that never reached the collective.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use tch::Tensor;

use super::env::RankEnv;
use super::Collective;
use crate::error::ModelError;

extern "C" {
    fn spatiallock_c10d_new(
        backend: *const c_char,
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        interface: *const c_char,
        cuda_device: c_int,
        group: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn spatiallock_c10d_has_nccl() -> bool;
    fn spatiallock_c10d_all_reduce_sum(group: *mut c_void, tensor: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn spatiallock_c10d_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int, err: *mut *mut c_char)
        -> c_int;
    fn spatiallock_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn spatiallock_c10d_store_timeout(group: *mut c_void, timeout_ms: i64);
    fn spatiallock_c10d_set_entered(group: *mut c_void, n: i64);
    fn spatiallock_c10d_start_heartbeat(
        group: *mut c_void,
        rank: c_int,
        interval_ms: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn spatiallock_c10d_store_add(
        group: *mut c_void,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn spatiallock_c10d_free(group: *mut c_void);
    fn spatiallock_c10d_free_string(s: *mut c_char);
    fn spatiallock_set_grad(param: *mut c_void, grad: *mut c_void, err: *mut *mut c_char) -> c_int;
}

/// Takes ownership of a message the shim allocated.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "c10d failed without a message".into();
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, freed once here.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { spatiallock_c10d_free_string(err) };
    message
}

/// Runs a shim call that reports failure as -1 plus a message.
fn check(call: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    match call(&mut err) {
        0 => Ok(()),
        _ => Err(take_message(err)),
    }
}

fn c_string(what: &str, s: &str) -> Result<CString, ModelError> {
    CString::new(s).map_err(|_| ModelError::Input(format!("{what} `{s}` contains a NUL character")))
}

/// Whether this build carries the NCCL process group (the `nccl` feature).
pub fn has_nccl() -> bool {
    // SAFETY: a constant query.
    unsafe { spatiallock_c10d_has_nccl() }
}

/// Which c10d process group carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo`: CPU tensors, TCP between ranks.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors, NVLink / InfiniBand / TCP between GPUs.
    Nccl,
}

impl Backend {
    /// Gloo for CPU ranks, NCCL for CUDA ranks (as `torch.distributed`'s defaults).
    pub fn for_device(device: tch::Device) -> Self {
        match device {
            tch::Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// How often each rank's heartbeat counts up, in milliseconds.
const HEARTBEAT_MS: i64 = 1000;

/// One rank's membership of a c10d process group.
pub struct ProcessGroup {
    group: *mut c_void,
    rank: usize,
    world_size: usize,
    master: String,
    timeout: Duration,
    /// Collectives this rank has entered (the first is 1).
    entered: u64,
}

// SAFETY: the c10d objects are used from one thread at a time (`&mut self` on every call), and
// c10d's store and process groups are themselves thread-safe.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group described by `env` (the torchrun variables): rank 0 serves the store
    /// at `MASTER_ADDR:MASTER_PORT`; every rank waits up to `timeout` for the others, and any
    /// later collective fails after `timeout` without progress. `device` picks the backend
    /// (Gloo for CPU, NCCL for CUDA); `GLOO_SOCKET_IFNAME` names the interface Gloo binds, as in
    /// PyTorch.
    ///
    /// Errors: [`ModelError::Collective`] when the rendezvous fails or times out;
    /// [`ModelError::Input`] for a NUL in the address or an NCCL group in a build without it.
    pub fn join(env: &RankEnv, device: tch::Device, timeout: Duration) -> Result<Self, ModelError> {
        let backend = Backend::for_device(device);
        if backend == Backend::Nccl && !has_nccl() {
            return Err(ModelError::Input(format!(
                "device {device:?} needs the NCCL process group, which this build lacks: build with \
                 `--features nccl` (scripts/setup-nccl.sh)"
            )));
        }
        let name = c_string("backend", backend.name())?;
        let addr = c_string("MASTER_ADDR", &env.master_addr)?;
        let interface = c_string(
            "GLOO_SOCKET_IFNAME",
            &std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default(),
        )?;
        let cuda = match device {
            tch::Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut group: *mut c_void = std::ptr::null_mut();
        let timeout_ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: every pointer is valid for the call; `group` receives an owned handle.
        check(|err| unsafe {
            spatiallock_c10d_new(
                name.as_ptr(),
                addr.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                timeout_ms,
                interface.as_ptr(),
                cuda,
                &mut group,
                err,
            )
        })
        .map_err(|m| {
            ModelError::Collective(format!(
                "rank {} of {} could not join the group at {}:{} within {:.0} s: {m}",
                env.rank,
                env.world_size,
                env.master_addr,
                env.master_port,
                timeout.as_secs_f64()
            ))
        })?;
        // SAFETY: `group` is live; the heartbeat thread is joined when the group is freed.
        if let Err(m) =
            check(|err| unsafe { spatiallock_c10d_start_heartbeat(group, env.rank as c_int, HEARTBEAT_MS, err) })
        {
            // SAFETY: the handle is freed once, here.
            unsafe { spatiallock_c10d_free(group) };
            return Err(ModelError::Collective(format!(
                "rank {} could not start its heartbeat: {m}",
                env.rank
            )));
        }
        Ok(Self {
            group,
            rank: env.rank,
            world_size: env.world_size,
            master: format!("{}:{}", env.master_addr, env.master_port),
            timeout,
            entered: 0,
        })
    }

    /// Why a collective failed, in terms of ranks: those whose heartbeat stopped (gone or
    /// stalled), those alive that never entered it, or the store's host (rank 0) being gone.
    fn diagnose(&self, what: &str, message: String) -> ModelError {
        // SAFETY: `group` is live; the short timeout bounds the store reads below.
        unsafe { spatiallock_c10d_store_timeout(self.group, 2000) };
        let others: Vec<usize> = (0..self.world_size).filter(|r| *r != self.rank).collect();
        let gone = |this: &Self| {
            ModelError::Collective(format!(
                "{what} #{} failed on rank {}, and the store on rank 0 ({}) no longer answers: rank 0 \
                 is gone. c10d: {message}",
                this.entered, this.rank, this.master
            ))
        };
        let beats = |this: &Self| -> Result<Vec<i64>, String> {
            others
                .iter()
                .map(|r| this.add(&format!("spatiallock/beat/{r}"), 0))
                .collect()
        };
        let Ok(before) = beats(self) else { return gone(self) };
        std::thread::sleep(Duration::from_millis(3 * HEARTBEAT_MS as u64));
        let Ok(after) = beats(self) else { return gone(self) };
        let mut silent = Vec::new();
        let mut behind = Vec::new();
        for (i, r) in others.iter().enumerate() {
            if after[i] == before[i] {
                silent.push(r.to_string());
            } else if self
                .add(&Self::entered_key(*r), 0)
                .is_ok_and(|n| (n as u64) < self.entered)
            {
                behind.push(r.to_string());
            }
        }
        let mut who = Vec::new();
        if !silent.is_empty() {
            who.push(format!(
                "rank(s) {} stopped responding (no heartbeat for {} s: gone or stalled)",
                silent.join(", "),
                3 * HEARTBEAT_MS / 1000
            ));
        }
        if !behind.is_empty() {
            who.push(format!("rank(s) {} alive but never reached it", behind.join(", ")));
        }
        if who.is_empty() {
            who.push("every rank is alive and entered it: a connection broke".into());
        }
        ModelError::Collective(format!(
            "{what} #{} failed on rank {} (timeout {:.0} s); {}. c10d: {message}",
            self.entered,
            self.rank,
            self.timeout.as_secs_f64(),
            who.join("; ")
        ))
    }

    /// Adds `delta` to a counter in the store (0 reads it); the count after.
    fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = CString::new(key).map_err(|e| e.to_string())?;
        let mut value = 0i64;
        // SAFETY: valid pointers for the call; the group is live.
        check(|err| unsafe { spatiallock_c10d_store_add(self.group, key.as_ptr(), delta, &mut value, err) })?;
        Ok(value)
    }

    fn entered_key(rank: usize) -> String {
        format!("spatiallock/entered/{rank}")
    }

    fn run(&mut self, what: &str, call: impl FnOnce(*mut c_void, *mut *mut c_char) -> c_int) -> Result<(), ModelError> {
        self.entered += 1;
        let group = self.group;
        // SAFETY: the group is live; an atomic store the heartbeat thread publishes.
        unsafe { spatiallock_c10d_set_entered(group, self.entered as i64) };
        check(|err| call(group, err)).map_err(|m| self.diagnose(what, m))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from spatiallock_c10d_new and is freed once.
        unsafe { spatiallock_c10d_free(self.group) };
    }
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<(), ModelError> {
        let t = tensor.as_mut_ptr() as *mut c_void;
        // SAFETY: `t` is a live torch::Tensor* for the duration of the call.
        self.run("all-reduce", |g, err| unsafe {
            spatiallock_c10d_all_reduce_sum(g, t, err)
        })
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<(), ModelError> {
        if root >= self.world_size {
            return Err(ModelError::Input(format!(
                "broadcast root {root} with {} ranks",
                self.world_size
            )));
        }
        let t = tensor.as_mut_ptr() as *mut c_void;
        // SAFETY: as above.
        self.run("broadcast", |g, err| unsafe {
            spatiallock_c10d_broadcast(g, t, root as c_int, err)
        })
    }

    fn barrier(&mut self) -> Result<(), ModelError> {
        // SAFETY: the group is live.
        self.run("barrier", |g, err| unsafe { spatiallock_c10d_barrier(g, err) })
    }
}

/// Makes `grad` the gradient of `param` (tch binds no setter).
///
/// Errors: [`ModelError::Collective`] when libtorch refuses (shape or device mismatch).
pub(super) fn set_grad(param: &mut Tensor, grad: &mut Tensor) -> Result<(), ModelError> {
    let (p, g) = (param.as_mut_ptr() as *mut c_void, grad.as_mut_ptr() as *mut c_void);
    // SAFETY: both are live torch::Tensor* for the call.
    check(|err| unsafe { spatiallock_set_grad(p, g, err) }).map_err(ModelError::Collective)
}
