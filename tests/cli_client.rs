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

#[test]
fn submit_status_report_cancel_retry_logs() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
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

    let list = ok(&client(&c, "admin-secret", &["status"]));
    assert!(
        list.contains(&id) && list.contains("noop-grid") && list.contains("3 queued"),
        "{list}"
    );
    let one = ok(&client(&c, "admin-secret", &["status", &id]));
    assert_eq!(one.matches("noop trial").count(), 3, "{one}");

    let cancel = ok(&client(&c, "admin-secret", &["cancel", &id]));
    assert!(cancel.contains("cancel requested for 3 job(s)"), "{cancel}");
    let csv = ok(&client(&c, "admin-secret", &["report", &id, "--format", "csv"]));
    assert!(csv.starts_with("trial,val,state,fid_kind"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.contains(",cancelled,")).count(), 3, "{csv}");
    let retry = ok(&client(&c, "admin-secret", &["retry-failed", &id]));
    assert!(retry.contains("0 job(s) requeued"), "{retry}");
    let logs = ok(&client(&c, "admin-secret", &["logs", &format!("{id}.0")]));
    assert!(logs.contains("(attempt 0)"), "{logs}");

    // A worker token may not read; a wrong token is refused; both say why.
    let denied = client(&c, "worker-secret", &["status"]);
    assert!(!denied.status.success());
    assert!(common::text(&denied).contains("403"), "{}", common::text(&denied));
    let wrong = client(&c, "nope-nope-nope", &["report", &id]);
    assert!(common::text(&wrong).contains("401") && common::text(&wrong).contains("unknown token"));
    let missing = client(&c, "admin-secret", &["report", "exp-000000000000"]);
    assert!(
        common::text(&missing).contains("no experiment `exp-000000000000`"),
        "{}",
        common::text(&missing)
    );
}
