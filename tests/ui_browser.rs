//! The web UI in a real browser: `spatiallock run GRID --serve` runs the tiny grid and keeps
//! serving; headless Chromium, driven through chromedriver (WebDriver), then reads the
//! experiment list, the report table, a live curve and the sample grid, and cancels a second,
//! hanging grid with the page's button (a write forged by another origin is refused first). A
//! screenshot of the experiment page is saved to `target/ui-screenshot.png`. chromedriver listens
//! on a port the kernel picks (`--port=0`) and says which.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `bash scripts/setup-browser.sh`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects a child's output lines (echoed to the test's own output, shown on failure).
fn collect_lines(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>, tag: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            lines.lock().unwrap().push(line);
        }
    });
}

fn output_of(lines: &Arc<Mutex<Vec<String>>>) -> String {
    lines.lock().unwrap().join("\n")
}

/// The port in chromedriver's `ChromeDriver was started successfully on port N.` line.
fn chromedriver_port(line: &str) -> Option<u16> {
    line.split("started successfully on port ")
        .nth(1)?
        .trim()
        .trim_end_matches('.')
        .parse()
        .ok()
}

/// Polls `probe` every 250 ms until it returns `Some`, failing with `what` after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `script` in the page (WebDriver "execute script": `return …`).
async fn js(browser: &Client, script: &str) -> Value {
    browser.execute(script, Vec::new()).await.unwrap()
}

/// `GET {base}{path}` as JSON (the embedded coordinator has no tokens).
async fn get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    response.json().await.unwrap()
}

/// The experiment of this name in the list.
async fn experiment_named(http: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let page = get(http, base, "/v1/experiments").await;
    page["items"].as_array()?.iter().find(|e| e["name"] == name).cloned()
}

async fn start_browser(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(caps);
    builder
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("chromedriver on port {port} started no Chromium session: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shows_a_finished_grid_and_cancels_a_running_one() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the web UI's browser test needs Debian's {package}; run `bash scripts/setup-browser.sh`"
        );
    }
    let out = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    // The embedded run, kept serving after the grid finishes.
    let mut run = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["run", "tests/fixtures/tiny-grid.yaml", "--serve", "--out"])
        .arg(out.path())
        .current_dir(common::root())
        .env_remove("LD_LIBRARY_PATH")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    collect_lines(run.stdout.take().unwrap(), lines.clone(), "run");
    collect_lines(run.stderr.take().unwrap(), lines.clone(), "run");
    let mut run = Reaped(run);
    let base = eventually(60, "the `web UI:` line", || {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("web UI: ")
                .map(|u| u.trim().trim_end_matches('/').to_string())
        });
        async move { found }
    })
    .await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // The grid finishes (1–2 min) and the coordinator keeps serving.
    let tiny = eventually(900, "the tiny grid to finish", || {
        if let Ok(Some(status)) = run.0.try_wait() {
            panic!("`spatiallock run --serve` exited ({status}):\n{}", output_of(&lines));
        }
        let (http, base) = (http.clone(), base.clone());
        async move {
            experiment_named(&http, &base, "tiny-grid")
                .await
                .filter(|e| !matches!(e["state"].as_str(), Some("queued" | "running")))
        }
    })
    .await;
    assert_eq!(tiny["state"], "succeeded", "{tiny}\n{}", output_of(&lines));
    let tiny_id = tiny["id"].as_str().unwrap().to_string();
    eventually(30, "the `serving` line", || {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("serving the coordinator"));
        async move { found.then_some(()) }
    })
    .await;
    // The page and its files need no token; a job's image is a read like any other.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let missing = http.get(format!("{base}/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing.text().await.unwrap().contains("nope.js"));
    let refused = http
        .get(format!("{base}/v1/jobs/{tiny_id}.x/files/..%2Fspatiallock.db"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400, "{}", refused.text().await.unwrap());

    let mut driver = Command::new(CHROMEDRIVER)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver_lines = Arc::new(Mutex::new(Vec::new()));
    collect_lines(driver.stdout.take().unwrap(), driver_lines.clone(), "chromedriver");
    let _driver = Reaped(driver);
    let driver_port = eventually(30, "chromedriver's port", || {
        let found = driver_lines.lock().unwrap().iter().find_map(|l| chromedriver_port(l));
        async move { found }
    })
    .await;
    eventually(30, "chromedriver to answer", || {
        let http = http.clone();
        async move {
            let status = http
                .get(format!("http://127.0.0.1:{driver_port}/status"))
                .send()
                .await
                .ok()?;
            status.status().is_success().then_some(())
        }
    })
    .await;
    let browser = start_browser(driver_port, profile.path()).await;

    // The list shows the experiment with its state.
    browser.goto(&format!("{base}/")).await.unwrap();
    let rows = eventually(30, "the experiment list", || {
        let browser = browser.clone();
        async move {
            let rows = js(
                &browser,
                "return Array.from(document.querySelectorAll('#experiments tbody tr')).map(r => r.textContent)",
            )
            .await;
            rows.as_array()
                .filter(|r| r.iter().any(|t| t.as_str().is_some_and(|t| t.contains("tiny-grid"))))
                .cloned()
        }
    })
    .await;
    assert!(
        rows.iter().any(|r| r.as_str().unwrap().contains("succeeded")),
        "{rows:?}"
    );

    // Its page: one report row per trial, curves with points, the sample grid.
    browser
        .find(Locator::Css(&format!("a[href='#/experiments/{tiny_id}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(30, "two rows in the report table", || {
        let browser = browser.clone();
        async move {
            let n = js(&browser, "return document.querySelectorAll('#report tbody tr').length").await;
            (n.as_u64() == Some(2)).then_some(())
        }
    })
    .await;
    let report = js(&browser, "return document.querySelector('#report').textContent").await;
    assert!(report.as_str().unwrap().contains("PoI+PoG"), "{report}");
    // The PoI+PoG trial's detector augmentation: a gain in its own column, empty for PoI.
    let gains = js(
        &browser,
        "const head = [...document.querySelectorAll('#report thead th')].map((t) => t.textContent); \
         const col = head.indexOf('detector gain'); \
         return [...document.querySelectorAll('#report tbody tr')].map((r) => col < 0 ? null : r.cells[col].textContent)",
    )
    .await;
    let gains: Vec<Option<String>> = serde_json::from_value(gains.clone()).unwrap();
    assert_eq!(gains.len(), 2, "{gains:?}");
    assert_eq!(gains[0].as_deref(), Some(""), "{gains:?}");
    assert!(
        gains[1]
            .as_deref()
            .is_some_and(|g| g.starts_with('+') || g.starts_with('-')),
        "{gains:?}"
    );
    let points = eventually(30, "points in the loss chart", || {
        let browser = browser.clone();
        async move {
            let points = js(&browser, "return window.spatiallockUi.chartPoints()").await;
            (points["loss"].as_u64().unwrap_or(0) > 0).then_some(points)
        }
    })
    .await;
    eprintln!("chart points: {points}");
    let width = eventually(30, "the sample grid image", || {
        let browser = browser.clone();
        async move {
            let w = js(
                &browser,
                "const i = document.querySelector('#samples img'); return i && i.complete ? i.naturalWidth : 0",
            )
            .await;
            w.as_u64().filter(|w| *w > 0)
        }
    })
    .await;
    eprintln!("sample grid: {width} px wide");
    // The comparison: one strip per trial, each loaded.
    let strips = eventually(30, "a comparison strip per trial", || {
        let browser = browser.clone();
        async move {
            let n = js(
                &browser,
                "return [...document.querySelectorAll('#comparison .comparison-row img')]\
                 .filter((i) => i.complete && i.naturalWidth > 0).length",
            )
            .await;
            n.as_u64().filter(|n| *n >= 2)
        }
    })
    .await;
    eprintln!("comparison: {strips} strips");
    let shot = common::root().join("target").join("ui-screenshot.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, browser.screenshot().await.unwrap()).unwrap();
    println!("screenshot of the experiment page: {}", shot.display());

    // A grid that hangs, cancelled with the page's button.
    let grid = std::fs::read_to_string(common::root().join("tests/fixtures/hang-grid.yaml")).unwrap();
    let submitted: Value = http
        .post(format!("{base}/v1/experiments"))
        .header("content-type", "application/yaml")
        .body(grid)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hang_id = submitted["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{submitted}"))
        .to_string();
    // A page of another origin cannot write to this coordinator without tokens (the submission
    // above, like the CLI's, sent no Origin).
    let forged = http
        .post(format!("{base}/v1/experiments/{hang_id}/cancel"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let refusal: Value = forged.json().await.unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`http://evil.example`"),
        "{refusal}"
    );
    browser.goto(&format!("{base}/#/experiments/{hang_id}")).await.unwrap();
    eventually(30, "an enabled cancel button", || {
        let browser = browser.clone();
        async move {
            let ready = js(
                &browser,
                "const b = document.querySelector('#cancel'); return Boolean(b && !b.disabled && b.offsetParent)",
            )
            .await;
            (ready == json!(true)).then_some(())
        }
    })
    .await;
    browser
        .find(Locator::Id("cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find(Locator::Id("cancel-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let cancelled = eventually(90, "the hanging grid to be cancelled", || {
        let (http, base, hang_id) = (http.clone(), base.clone(), hang_id.clone());
        async move {
            let e = get(&http, &base, &format!("/v1/experiments/{hang_id}")).await;
            (e["state"] == "cancelled").then_some(e)
        }
    })
    .await;
    assert!(cancelled["jobs"]["cancelled"].as_u64().unwrap_or(0) >= 2, "{cancelled}");
    // The page follows by itself.
    eventually(30, "the page to show the cancel", || {
        let browser = browser.clone();
        async move {
            let state = js(&browser, "return document.querySelector('#exp-state').textContent").await;
            (state == "cancelled").then_some(())
        }
    })
    .await;
    browser.close().await.unwrap();

    // Ctrl-C ends serving; the run's own experiment succeeded, so it exits 0.
    let pid = i32::try_from(run.0.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = eventually(90, "`spatiallock run --serve` to stop on Ctrl-C", || {
        let status = run.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status}\n{}", output_of(&lines));
}

#[test]
fn chromedriver_says_which_port_it_bound() {
    assert_eq!(
        chromedriver_port("ChromeDriver was started successfully on port 32771."),
        Some(32771)
    );
    assert_eq!(chromedriver_port("Only local connections are allowed."), None);
}
