//! Supervising the rank processes of a data-parallel training job on this worker's devices:
//! one `spatiallock rank` process per rank, rendezvous on a loopback port, their events turned
//! into the attempt's reports, stop requests passed on, and one verdict for the attempt. A rank
//! that exits abnormally ends the attempt for all: the others fail by themselves within the
//! collective timeout (c10d), and are killed if they have not ended shortly after it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use spatiallock_model::dist::RankEnv;
use spatiallock_protocol::JobPayload;

use crate::jobs::{JobEnv, JobFailure};
use crate::rank_process::{RankEnd, RankEvent, RankJob, SUPERVISED_VAR};
use crate::report::StopReason;
use crate::roots::file_uri;

/// How rank processes are started.
#[derive(Debug, Clone)]
pub struct RankLaunch {
    /// The `spatiallock` binary (its hidden `rank` subcommand runs one rank).
    pub program: PathBuf,
    /// How long the rendezvous and any collective wait for the other ranks.
    pub timeout: Duration,
    /// Gradient bucket size in MiB.
    pub bucket_mib: f64,
    /// Intra-op threads for libtorch in each rank.
    pub threads: i32,
}

impl Default for RankLaunch {
    /// The `spatiallock` binary beside this one, a 300 s timeout, DDP's 25 MiB buckets, one
    /// thread per rank.
    fn default() -> Self {
        Self {
            program: default_rank_program(),
            timeout: Duration::from_secs(300),
            bucket_mib: 25.0,
            threads: 1,
        }
    }
}

enum Message {
    Event(usize, RankEvent),
    Stderr(usize, String),
}

struct Rank {
    /// Its rank in the whole group.
    global: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    end: Option<RankEnd>,
    exit: Option<std::process::ExitStatus>,
    /// The last lines it wrote on stderr (a panic's message, a loader error).
    stderr_tail: VecDeque<String>,
}

/// Lines of a rank's stderr kept for the verdict.
const STDERR_TAIL: usize = 5;

/// A free TCP port for rank 0's store (chosen by the kernel, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn pump_stdout(rank: usize, out: impl std::io::Read + Send + 'static, tx: Sender<Message>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let msg = match serde_json::from_str::<RankEvent>(&line) {
                Ok(e) => Message::Event(rank, e),
                Err(_) => Message::Stderr(rank, line),
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

fn pump_stderr(rank: usize, err: impl std::io::Read + Send + 'static, tx: Sender<Message>) {
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(Message::Stderr(rank, line)).is_err() {
                return;
            }
        }
    });
}

/// Where this worker's ranks sit in their group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Rank 0's rendezvous store host.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Ranks in the whole group.
    pub world_size: usize,
    /// The rank of this worker's first process.
    pub first_rank: usize,
}

impl Placement {
    /// Every rank on this worker: rank 0's store on a free loopback port.
    ///
    /// Errors: no free port.
    pub fn local(ranks: usize) -> std::io::Result<Placement> {
        Ok(Placement {
            master_addr: "127.0.0.1".into(),
            master_port: free_port()?,
            world_size: ranks,
            first_rank: 0,
        })
    }
}

/// Runs this worker's part of `payload`, one rank process per device of `devices`, placed by
/// `place` (all ranks when local; a gang member's share otherwise), and returns the output
/// folder, as [`crate::jobs::execute`] does for one process.
pub fn execute_ranks(
    payload: &JobPayload,
    env: &JobEnv,
    devices: &[String],
    place: &Placement,
    launch: &RankLaunch,
) -> Result<PathBuf, JobFailure> {
    let local = devices.len();
    let job = RankJob {
        payload: payload.clone(),
        out: env.out.clone(),
        attempt: env.attempt,
        resume: env.resume.clone(),
        inputs: env.inputs.clone(),
        devices: devices.to_vec(),
        cache_dir: Some(env.cache_dir.clone()),
        timeout_s: launch.timeout.as_secs_f64(),
        bucket_mib: launch.bucket_mib,
    };
    let infra = |what: &str, e: &dyn std::fmt::Display| JobFailure::Infra(format!("{what}: {e}"));
    std::fs::create_dir_all(&env.out).map_err(|e| infra(&format!("cannot create {}", env.out.display()), &e))?;
    // One file per member of a gang (they share the attempt folder), written whole.
    let job_file = env.out.join(format!("rank-job-{}.json", place.first_rank));
    let text = serde_json::to_string_pretty(&job).map_err(|e| infra("cannot write the rank job", &e))?;
    let partial = job_file.with_extension("json.partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, &job_file))
        .map_err(|e| infra(&job_file.display().to_string(), &e))?;
    env.reporter.log(format!(
        "ranks {}..{} of {} on {}, rendezvous at {}:{}",
        place.first_rank,
        place.first_rank + local - 1,
        place.world_size,
        devices.join(","),
        place.master_addr,
        place.master_port
    ));
    let (tx, rx) = channel();
    let mut ranks: Vec<Rank> = Vec::with_capacity(local);
    for r in 0..local {
        let rank_env = RankEnv {
            master_addr: place.master_addr.clone(),
            master_port: place.master_port,
            rank: place.first_rank + r,
            world_size: place.world_size,
            local_rank: r,
            local_world_size: local,
        };
        let spawned = Command::new(&launch.program)
            .arg("rank")
            .arg("--job")
            .arg(&job_file)
            .arg("--threads")
            .arg(launch.threads.max(1).to_string())
            .envs(rank_env.vars())
            .env(SUPERVISED_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                for mut rank in ranks {
                    let _ = rank.child.kill();
                    let _ = rank.child.wait();
                }
                return Err(infra(
                    &format!(
                        "cannot start rank {} ({})",
                        place.first_rank + r,
                        launch.program.display()
                    ),
                    &e,
                ));
            }
        };
        if let Some(out) = child.stdout.take() {
            pump_stdout(r, out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump_stderr(r, err, tx.clone());
        }
        let stdin = child.stdin.take();
        ranks.push(Rank {
            global: place.first_rank + r,
            child,
            stdin,
            end: None,
            exit: None,
            stderr_tail: VecDeque::new(),
        });
    }
    drop(tx);
    supervise(&mut ranks, env, launch.timeout, &rx);
    verdict(&ranks, env)
}

/// Forwards events until every rank has exited; asks all to stop on a stop request, and kills
/// the rest when one has failed and the others have not ended within the collective timeout.
fn supervise(ranks: &mut [Rank], env: &JobEnv, timeout: Duration, rx: &std::sync::mpsc::Receiver<Message>) {
    let mut stop_sent = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Message::Event(r, event)) => match event {
                RankEvent::Metric { name, step, value } => env.reporter.metric(&name, step, value),
                RankEvent::Checkpoint { step, dir } => env.reporter.checkpoint(step, file_uri(&dir)),
                RankEvent::Log(line) => env.reporter.log(line),
                RankEvent::StepTiming(timing) => env.reporter.step_timing(timing),
                RankEvent::End(end) => ranks[r].end = Some(end),
            },
            Ok(Message::Stderr(r, line)) => {
                tracing::info!(target: "rank", rank = r, "{line}");
                let tail = &mut ranks[r].stderr_tail;
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if !stop_sent && env.reporter.stop_reason().is_some() {
            for rank in ranks.iter_mut() {
                if let Some(stdin) = rank.stdin.as_mut() {
                    let _ = writeln!(stdin, "stop");
                    let _ = stdin.flush();
                }
            }
            stop_sent = true;
            // A rank stuck outside the collectives (a dead mount) must not hold the worker.
            kill_at.get_or_insert(Instant::now() + timeout + Duration::from_secs(10));
        }
        for rank in ranks.iter_mut() {
            let r = rank.global;
            if rank.exit.is_none() {
                if let Ok(Some(status)) = rank.child.try_wait() {
                    rank.exit = Some(status);
                    // Exit code 0 means the rank ended its job (its last line may still be in
                    // the pipe); anything else ends the attempt for all.
                    if !status.success() && kill_at.is_none() {
                        env.reporter.log(format!(
                            "rank {r} ended ({}); the other ranks end within the collective timeout ({:.0} s)",
                            describe_exit(status),
                            timeout.as_secs_f64()
                        ));
                        kill_at = Some(Instant::now() + timeout + Duration::from_secs(10));
                    }
                }
            }
        }
        if ranks.iter().all(|r| r.exit.is_some()) {
            // Lines still in the pipes after the last exit: until every pump has seen its pipe
            // close (a few seconds at most).
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Some(msg) = deadline
                .checked_duration_since(Instant::now())
                .and_then(|left| rx.recv_timeout(left).ok())
            {
                match msg {
                    Message::Event(r, RankEvent::End(end)) => ranks[r].end = Some(end),
                    Message::Event(_, RankEvent::Log(line)) => env.reporter.log(line),
                    Message::Event(_, RankEvent::StepTiming(timing)) => env.reporter.step_timing(timing),
                    Message::Event(_, RankEvent::Metric { name, step, value }) => {
                        env.reporter.metric(&name, step, value)
                    }
                    Message::Event(_, RankEvent::Checkpoint { step, dir }) => {
                        env.reporter.checkpoint(step, file_uri(&dir))
                    }
                    Message::Stderr(r, line) => ranks[r].stderr_tail.push_back(line),
                }
            }
            return;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (r, rank) in ranks.iter_mut().enumerate() {
                if rank.exit.is_none() {
                    env.reporter
                        .log(format!("rank {r} did not end after the timeout: killed"));
                    let _ = rank.child.kill();
                }
            }
            kill_at = None;
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit code 0".into(),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown exit".into(),
    }
}

/// One verdict from every rank's end: success when all succeeded; an application error when
/// any rank's own job failed (it spends an attempt); a stop when all stopped on request;
/// otherwise an infrastructure failure naming each rank that died or broke the group.
fn verdict(ranks: &[Rank], env: &JobEnv) -> Result<PathBuf, JobFailure> {
    if let Some(RankEnd::Succeeded(out)) = ranks.first().and_then(|r| r.end.clone()) {
        if ranks.iter().all(|r| matches!(r.end, Some(RankEnd::Succeeded(_)))) {
            return Ok(out);
        }
    }
    let mut apps = Vec::new();
    let mut others = Vec::new();
    for rank in ranks {
        let r = rank.global;
        match (&rank.end, rank.exit) {
            (Some(RankEnd::App(m)), _) => apps.push(format!("rank {r}: {m}")),
            (Some(RankEnd::Infra(m)), _) => others.push(format!("rank {r}: {m}")),
            (Some(RankEnd::Stopped(_) | RankEnd::Succeeded(_)), _) => {}
            (None, Some(status)) => {
                let last: Vec<&str> = rank.stderr_tail.iter().map(String::as_str).collect();
                let said = if last.is_empty() {
                    String::new()
                } else {
                    format!(": {}", last.join(" | "))
                };
                let line = format!("rank {r} died ({}){said}", describe_exit(status));
                // An exit code is the rank's own doing (a panic, a bad job file); a signal came
                // from outside (the OOM killer, a lost node, an operator).
                if status.code().is_some() {
                    apps.push(line);
                } else {
                    others.push(line);
                }
            }
            (None, None) => others.push(format!("rank {r}: no exit status")),
        }
    }
    if !apps.is_empty() {
        return Err(JobFailure::App(apps.join("; ")));
    }
    if others.is_empty() {
        let reason = env.reporter.stop_reason().unwrap_or(StopReason::Shutdown);
        env.reporter
            .log(format!("all {} ranks stopped ({reason:?})", ranks.len()));
        return Err(JobFailure::Stopped(reason));
    }
    Err(JobFailure::Infra(others.join("; ")))
}

/// Whether `payload` runs as several rank processes, and on which of `devices`: a training job
/// whose world size is above one, on its first `world_size` devices.
///
/// Errors: the job needs more devices than the worker has.
pub fn rank_devices(payload: &JobPayload, devices: &[String]) -> Result<Option<Vec<String>>, String> {
    let JobPayload::Train(t) = payload else {
        return Ok(None);
    };
    let world = t.world_size as usize;
    if world <= 1 {
        return Ok(None);
    }
    if world > devices.len() {
        return Err(format!(
            "world_size {world} needs {world} devices; this worker has {} ({})",
            devices.len(),
            devices.join(",")
        ));
    }
    Ok(Some(devices[..world].to_vec()))
}

/// The `spatiallock` binary next to the running one, for rank processes: the running binary
/// itself when it is `spatiallock`.
pub fn default_rank_program() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("spatiallock"));
    if me.file_stem().is_some_and(|s| s == "spatiallock") {
        return me;
    }
    // A test binary under target/<profile>/deps: the CLI is in target/<profile>.
    me.parent()
        .and_then(Path::parent)
        .map(|p| p.join("spatiallock"))
        .filter(|p| p.exists())
        .unwrap_or(me)
}
