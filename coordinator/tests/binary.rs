//! The torch-free `spatiallock-coordinator` binary, as an operator starts it: tokens from a
//! file, serving the API, with no libtorch in the process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_coordinator_binary_serves_without_libtorch() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# test deployment\nadmin:admin-secret\n").unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spatiallock-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--database-url"])
        .arg(format!("sqlite://{}", dir.path().join("c.db").display()))
        .arg("--tokens-file")
        .arg(&tokens)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(Instant::now() < deadline, "the coordinator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (anon, admin) = rt.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/v1/experiments");
        let anon = http.get(&url).send().await.unwrap().status();
        let admin = http
            .get(&url)
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap()
            .status();
        (anon, admin)
    });
    assert_eq!(anon, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(admin, reqwest::StatusCode::OK);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("VmRSS: ?");
    eprintln!("spatiallock-coordinator {rss}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!maps.contains("libtorch"), "the coordinator process maps libtorch");

    // Without tokens on an address other machines reach, it refuses to start, saying why.
    let out = Command::new(env!("CARGO_BIN_EXE_spatiallock-coordinator"))
        .args(["--listen", "0.0.0.0:0", "--database-url"])
        .arg(format!("sqlite://{}", dir.path().join("c.db").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
}
