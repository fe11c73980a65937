//! The processes of an end-to-end test that starts services of its own: the external tools they
//! need, children whose output goes to files (read back for the addresses they bound), killed
//! and reaped however the test ends, and waits that fail as soon as a child dies.
#![allow(dead_code)] // not every test file uses every helper

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `env`, else `name` on `PATH`; fails with `install` (what to run) when neither exists.
pub fn tool(name: &str, env: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env}={} is not a file: unset it to use `{name}` from PATH, or {install}",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found ({env} is unset and there is none on PATH): {install}, or set {env}")
        })
}

/// Seconds since the Unix epoch (Prometheus' time stamps).
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The child processes of a test, each writing its standard output to `<name>.out` and its
/// standard error to `<name>.log` in `logs`; all killed and reaped, last started first, when the
/// guard drops, however the test ends (their logs' tails are printed first when it ends in a
/// panic).
pub struct Children {
    logs: PathBuf,
    running: Vec<(String, Child)>,
}

impl Children {
    pub fn new(logs: &Path) -> Children {
        Children {
            logs: logs.to_path_buf(),
            running: Vec::new(),
        }
    }

    pub fn spawn(&mut self, name: &str, command: &mut Command) {
        let out = File::create(self.logs.join(format!("{name}.out"))).expect("the child's output file");
        let log = File::create(self.logs.join(format!("{name}.log"))).expect("the child's log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        self.running.push((name.to_string(), child));
    }

    /// What child `name` has written so far: its standard output, then its standard error.
    pub fn output(&self, name: &str) -> String {
        let read = |ext: &str| std::fs::read_to_string(self.logs.join(format!("{name}.{ext}"))).unwrap_or_default();
        read("out") + &read("log")
    }

    /// Waits (at most `secs`) until `find` finds what it looks for in child `name`'s output
    /// (an address it bound, say); fails when the child dies first.
    pub async fn wait_for_output<T>(
        &mut self,
        name: &str,
        secs: u64,
        what: &str,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Deadline::new(secs, what);
        loop {
            if let Some(found) = find(&self.output(name)) {
                return found;
            }
            deadline.tick(self, format!("{name} has not said it yet")).await;
        }
    }

    /// The last lines of every child's output and log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.running {
            for ext in ["out", "log"] {
                let text = std::fs::read_to_string(self.logs.join(format!("{name}.{ext}"))).unwrap_or_default();
                if text.is_empty() {
                    continue;
                }
                let lines: Vec<&str> = text.lines().collect();
                out += &format!("--- {name}.{ext} (last lines) ---\n");
                for line in &lines[lines.len().saturating_sub(25)..] {
                    out += line;
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Fails when a child has exited: none is meant to before the end.
    pub fn check_alive(&mut self, waiting_for: &str) {
        let mut exited = Vec::new();
        for (name, child) in &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push(format!("{name} exited ({status})"));
            }
        }
        assert!(
            exited.is_empty(),
            "{} while waiting for {waiting_for}\n{}",
            exited.join(", "),
            self.log_tails()
        );
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for (_, child) in self.running.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A wait with a time limit that also fails as soon as a child process dies.
pub struct Deadline {
    at: Instant,
    secs: u64,
    what: String,
}

impl Deadline {
    pub fn new(secs: u64, what: &str) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_secs(secs),
            secs,
            what: what.to_string(),
        }
    }

    /// Sleeps a little, failing past the deadline or when a child died.
    pub async fn tick(&self, children: &mut Children, state: impl std::fmt::Display) {
        children.check_alive(&self.what);
        assert!(
            Instant::now() < self.at,
            "timed out after {} s waiting for {} (last seen: {state})\n{}",
            self.secs,
            self.what,
            children.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
