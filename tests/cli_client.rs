//! The client commands against a `spatiallock coordinator` process, as a user types them.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(db: &std::path::Path) -> Coordinator {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args([
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
        ])
        .arg(format!("sqlite://{}", db.display()))
        .args(["--tokens", "admin:admin-secret,worker:worker-secret"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(Instant::now() < deadline, "the coordinator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Coordinator {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn client(c: &Coordinator, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(args)
        .current_dir(common::root())
        .env("SPATIALLOCK_COORDINATOR", &c.url)
        .env("SPATIALLOCK_TOKEN", token)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let t = common::text(o);
    assert!(o.status.success(), "{t}");
    t
}

/// Standard output alone, of a command that succeeded.
fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", common::text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn submit_status_report_cancel_retry_logs() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let empty = stdout(&client(&c, "admin-secret", &["status"]));
    assert_eq!(
        empty.trim(),
        "no experiments yet; submit one with `spatiallock submit FILE`"
    );
    let first = ok(&client(
        &c,
        "admin-secret",
        &["submit", "tests/fixtures/noop-grid.yaml"],
    ));
    assert!(first.contains("submitted: 3 trials, 3 jobs"), "{first}");
    let id = first.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("exp-"), "{first}");
    let again = ok(&client(
        &c,
        "admin-secret",
        &["submit", "tests/fixtures/noop-grid.yaml"],
    ));
    assert!(again.starts_with(&id) && again.contains("already submitted"), "{again}");

    let list = stdout(&client(&c, "admin-secret", &["status"]));
    assert!(
        list.starts_with("ID ") && list.contains("NAME"),
        "a header first: {list}"
    );
    assert!(
        list.contains(&id) && list.contains("noop-grid") && list.contains("3 queued"),
        "{list}"
    );
    // One experiment, found by id or by name: the whole table on stdout.
    let by_id = client(&c, "admin-secret", &["status", &id]);
    let one = stdout(&by_id);
    assert_eq!(one.matches("noop trial").count(), 3, "{one}");
    assert!(
        one.starts_with(&format!("noop-grid ({id}): ")) && one.contains(" — elapsed ") && one.contains("ETA unknown"),
        "{one}"
    );
    assert!(
        !String::from_utf8_lossy(&by_id.stderr).contains("noop trial"),
        "the table goes to stdout only"
    );
    let by_name = stdout(&client(&c, "admin-secret", &["status", "noop-grid"]));
    assert!(by_name.starts_with(&format!("noop-grid ({id}): ")), "{by_name}");
    // The coordinator's views as JSON.
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&client(&c, "admin-secret", &["status", "--json"]))).unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&client(&c, "admin-secret", &["status", "noop-grid", "--json"]))).unwrap();
    assert_eq!(shown["experiment"]["id"], id.as_str(), "{shown}");
    assert_eq!(shown["jobs"].as_array().map(Vec::len), Some(3), "{shown}");

    let cancel = ok(&client(&c, "admin-secret", &["cancel", "noop-grid"]));
    assert!(cancel.contains("cancel requested for 3 job(s)"), "{cancel}");
    let csv = ok(&client(&c, "admin-secret", &["report", &id, "--format", "csv"]));
    assert!(csv.starts_with("trial,val,state,fid_kind"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.contains(",cancelled,")).count(), 3, "{csv}");
    let retry = ok(&client(&c, "admin-secret", &["retry-failed", &id]));
    assert!(retry.contains(&format!("0 job(s) of {id} requeued")), "{retry}");
    assert!(
        retry.contains(&format!(
            "3 job(s) of {id} are cancelled, not failed: `spatiallock resume {id}`"
        )),
        "{retry}"
    );
    let logs = ok(&client(&c, "admin-secret", &["logs", &format!("{id}.0")]));
    assert!(
        logs.contains("  noop  cancelled  attempt 0  noop trial 0 stage 0\n(not started)\n"),
        "{logs}"
    );
    let resubmit = ok(&client(
        &c,
        "admin-secret",
        &["submit", "tests/fixtures/noop-grid.yaml"],
    ));
    assert!(
        resubmit.contains(&format!("{id} is cancelled: `spatiallock resume {id}`")),
        "{resubmit}"
    );
    let resume = ok(&client(&c, "admin-secret", &["resume", &id]));
    assert!(resume.contains(&format!("3 job(s) of {id} requeued")), "{resume}");

    // A warning reads `path: message`; a second experiment of the same name makes the name
    // ambiguous, and the error lists both ids.
    let grid = dir.path().join("noop-grid-val.yaml");
    std::fs::write(
        &grid,
        std::fs::read_to_string(common::root().join("tests/fixtures/noop-grid.yaml"))
            .unwrap()
            .replace("train: {kind: shapes, split: train", "train: {kind: shapes, split: val"),
    )
    .unwrap();
    let second = client(&c, "admin-secret", &["submit", &grid.display().to_string()]);
    let second_id = stdout(&second).split_whitespace().next().unwrap().to_string();
    let warned = String::from_utf8_lossy(&second.stderr);
    assert!(
        warned.contains("warning: ") && warned.contains("data.train.split: ") && !warned.contains("SpecError"),
        "{warned}"
    );
    let ambiguous = client(&c, "admin-secret", &["report", "noop-grid"]);
    assert!(!ambiguous.status.success());
    let text = common::text(&ambiguous);
    assert!(
        text.contains("2 experiments are named `noop-grid`") && text.contains(&id) && text.contains(&second_id),
        "{text}"
    );
    let unknown = common::text(&client(&c, "admin-secret", &["cancel", "no-such-grid"]));
    assert!(
        unknown.contains("no experiment has the id or name `no-such-grid`"),
        "{unknown}"
    );
    // Report formats are checked by the CLI before any request.
    let xml = client(&c, "admin-secret", &["report", &id, "--format", "xml"]);
    assert!(!xml.status.success());
    assert!(
        common::text(&xml).contains("[possible values: md, csv, json]"),
        "{}",
        common::text(&xml)
    );

    // A worker token may not read; a wrong token is refused; no token is asked for; each says
    // what to pass.
    let denied = client(&c, "worker-secret", &["status"]);
    assert!(!denied.status.success());
    let text = common::text(&denied);
    assert!(text.contains("403") && text.contains("--token"), "{text}");
    let wrong = client(&c, "nope-nope-nope", &["report", &id]);
    let text = common::text(&wrong);
    assert!(
        text.contains("401") && text.contains("unknown token") && text.contains("--token"),
        "{text}"
    );
    let anonymous = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["status", "--coordinator", &c.url])
        .env_remove("SPATIALLOCK_TOKEN")
        .output()
        .unwrap();
    let text = common::text(&anonymous);
    assert!(
        text.contains("needs a token: pass a user (or admin) token with --token or set SPATIALLOCK_TOKEN"),
        "{text}"
    );
    let missing = client(&c, "admin-secret", &["report", "exp-000000000000"]);
    assert!(
        common::text(&missing).contains("no experiment has the id or name `exp-000000000000`"),
        "{}",
        common::text(&missing)
    );
}

/// The python that has TensorBoard (scripts/test.sh sets it); the test fails rather than skip
/// without it.
fn tensorboard_python() -> String {
    match std::env::var("SPATIALLOCK_TENSORBOARD_PYTHON") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => panic!(
            "SPATIALLOCK_TENSORBOARD_PYTHON is not set: run the tests through scripts/test.sh, or set it to \
             the python that `bash scripts/fixtures/setup-python.sh scripts/tensorboard/requirements.txt` prints"
        ),
    }
}

/// Runs the jobs of the experiment the coordinator holds by hand, as a worker would report
/// them: `loss` at steps 1 and 2 (pretrain 31, 30; train 21, 20; train-detector 11, 10), `map`
/// 12.5 for the evaluation, a log line each; the detector's first attempt fails on a missing
/// file.
fn run_jobs_by_hand(url: &str) {
    use spatiallock_protocol::api::{
        CompleteRequest, FailRequest, FailureClass, LogBatch, MetricPoint, MetricsBatch, RegisterWorker,
    };
    use spatiallock_worker::CoordinatorClient;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let worker = CoordinatorClient::new(url, Some("worker-secret".into()));
        let reg = worker
            .register(&RegisterWorker {
                name: "by-hand".into(),
                devices: vec!["cpu".into()],
                labels: Default::default(),
                metrics_address: None,
            })
            .await
            .unwrap();
        let worker = worker.with_worker_key(&reg.worker_key);
        let mut completed = 0;
        let mut detector_failed = false;
        while completed < 4 {
            let lease = worker
                .lease(&reg.worker_id, Duration::from_secs(10), 1, None)
                .await
                .unwrap()
                .expect("a job within 10 s");
            let (job, attempt) = (lease.job_id.as_str(), lease.attempt);
            let kind = serde_json::to_value(&lease.payload).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string();
            let series = match kind.as_str() {
                "evaluate" => ("map", vec![(0, 12.5)]),
                "pretrain" => ("loss", vec![(1, 31.0), (2, 30.0)]),
                "train" => ("loss", vec![(1, 21.0), (2, 20.0)]),
                _ => ("loss", vec![(1, 11.0), (2, 10.0)]),
            };
            let points: Vec<MetricPoint> = series
                .1
                .iter()
                .map(|&(step, value)| MetricPoint { step, value })
                .collect();
            let metrics = [(series.0.to_string(), points)].into_iter().collect();
            worker.metrics(job, &MetricsBatch { attempt, metrics }).await.unwrap();
            let lines = vec![format!("hello from {kind}")];
            worker.logs(job, &LogBatch { attempt, lines }).await.unwrap();
            if kind == "train-detector" && !detector_failed {
                detector_failed = true;
                let message = "/data/val.json: No such file or directory (os error 2)".to_string();
                let body = FailRequest {
                    attempt,
                    class: FailureClass::App,
                    message,
                };
                worker.fail(job, &body).await.unwrap();
                continue;
            }
            let body = CompleteRequest { attempt, output: None };
            worker.complete(job, &body).await.unwrap();
            completed += 1;
        }
    });
}

#[test]
fn metrics_per_job_as_csv_json_and_tensorboard_and_logs_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let first = ok(&client(
        &c,
        "admin-secret",
        &["submit", "tests/fixtures/tiny-trial.yaml"],
    ));
    let id = first.split_whitespace().next().unwrap().to_string();
    run_jobs_by_hand(&c.url);
    let trial = format!("{id}.0");

    let csv = ok(&client(&c, "admin-secret", &["metrics", &trial, "--format", "csv"]));
    assert!(csv.starts_with("job,kind,name,step,value\n"), "{csv}");
    for row in [
        ",pretrain,loss,1,31\n",
        ",pretrain,loss,2,30\n",
        ",train,loss,2,20\n",
        ",train-detector,loss,2,10\n",
        ",evaluate,map,0,12.5\n",
    ] {
        assert!(csv.contains(row), "{row} in {csv}");
    }
    let json = ok(&client(
        &c,
        "admin-secret",
        &["metrics", &trial, "--job", "train", "--format", "json"],
    ));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["jobs"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(
        json["jobs"][0]["series"]["loss"],
        serde_json::json!([{"step": 1, "value": 21.0}, {"step": 2, "value": 20.0}])
    );

    // TensorBoard itself reads the export: a run per job, each with its own `loss`.
    let runs = dir.path().join("tb");
    ok(&client(
        &c,
        "admin-secret",
        &[
            "metrics",
            &trial,
            "--format",
            "tensorboard",
            "--out",
            runs.to_str().unwrap(),
        ],
    ));
    const READ_RUNS: &str = r#"
import json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
out = {}
for run in sorted(os.listdir(sys.argv[1])):
    acc = EventAccumulator(os.path.join(sys.argv[1], run), size_guidance={"scalars": 0})
    acc.Reload()
    out[run.rsplit("-", 1)[0]] = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
print(json.dumps(out, sort_keys=True))
"#;
    let read = Command::new(tensorboard_python())
        .args(["-c", READ_RUNS])
        .arg(&runs)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", common::text(&read));
    let stdout = String::from_utf8_lossy(&read.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "pretrain": {"loss": [[1, 31.0], [2, 30.0]]},
            "train": {"loss": [[1, 21.0], [2, 20.0]]},
            "train-detector": {"loss": [[1, 11.0], [2, 10.0]]},
            "evaluate": {"map": [[0, 12.5]]},
        }),
        "{}",
        common::text(&read)
    );

    // Logs: a section per job, dependencies first, with why an attempt failed; or one job's.
    let logs = ok(&client(&c, "admin-secret", &["logs", &trial]));
    let headers: Vec<&str> = logs.lines().filter(|l| l.starts_with("== ")).collect();
    let kinds: Vec<&str> = headers.iter().filter_map(|h| h.split_whitespace().nth(2)).collect();
    assert_eq!(kinds, ["pretrain", "train", "train-detector", "evaluate"], "{logs}");
    let detector_section = "  train-detector  succeeded  attempt 2  ";
    let reason =
        "attempt 1 failed-app: /data/val.json: No such file or directory (os error 2)\nhello from train-detector\n";
    assert!(logs.contains(detector_section) && logs.contains(reason), "{logs}");
    let detector = headers[2].split_whitespace().nth(1).unwrap_or_default();
    let one = ok(&client(&c, "admin-secret", &["logs", detector]));
    assert!(
        one.starts_with(&format!("== {detector}{detector_section}")) && one.contains(reason),
        "{one}"
    );
}

#[test]
fn messages_and_flags_without_a_coordinator() {
    // Nothing listens: the error says so and how to start or name one.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let o = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["status", "--coordinator", &url])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = common::text(&o);
    assert!(
        text.contains(&format!("could not reach the coordinator at {url}")) && text.contains("is it running?"),
        "{text}"
    );

    // --coordinator and --token belong to the commands that talk to a coordinator.
    let help = |args: &[&str]| stdout(&common::spatiallock(args));
    let plan = help(&["plan", "--help"]);
    assert!(!plan.contains("--coordinator") && !plan.contains("--token"), "{plan}");
    let submit = help(&["submit", "--help"]);
    assert!(
        submit.contains("--coordinator") && submit.contains("A user (or admin) token"),
        "{submit}"
    );
    assert!(
        submit.starts_with("Submit a grid"),
        "its own description first: {submit}"
    );
    // Each client command keeps its own one-line description in the command list.
    let top = help(&["--help"]);
    assert!(
        top.lines()
            .any(|l| l.trim_start().starts_with("resume") && l.contains("Requeue"))
            && !top.contains("Where the coordinator is"),
        "{top}"
    );
    let worker = help(&["worker", "--help"]);
    assert!(worker.contains("A worker (or admin) token"), "{worker}");
    let serve = help(&["coordinator", "--help"]);
    assert!(
        !serve.contains("--token <") && !serve.contains("--coordinator") && serve.contains("--tokens <"),
        "{serve}"
    );
    assert!(serve.contains("at least 8"), "{serve}");

    // One device flag name everywhere; a single-device command refuses a list (under the old
    // name too).
    for flag in ["--devices", "--device"] {
        let o = common::spatiallock(&[
            "sample",
            "--checkpoint",
            "x",
            "--layout",
            "y",
            "--out",
            "z",
            flag,
            "cpu,cpu",
        ]);
        assert!(!o.status.success());
        let text = common::text(&o);
        assert!(
            text.contains("--devices: this command runs on one device, not 2"),
            "{text}"
        );
    }
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // `spatiallock … | head -0`: the reader is gone long before the first line (the process
    // still has to load libtorch when its pipe is closed).
    for args in [&["plan", "configs/demo.yaml"][..], &["model", "summary", "tiny"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
            .args(args)
            .current_dir(common::root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        // Ended by SIGPIPE (13), as `cat` would be, or finished before noticing.
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[test]
fn a_missing_postgres_database_is_named_once_with_how_to_create_it() {
    // Needs PostgreSQL on 127.0.0.1:5432 (the test command starts it), not this database.
    let name = format!("sl_missing_{}", std::process::id());
    let o = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("`createdb -h 127.0.0.1 -p 5432 -U postgres {name}`")),
        "{stderr}"
    );
    assert_eq!(stderr.matches(&name).count(), 1, "{stderr}");
}
