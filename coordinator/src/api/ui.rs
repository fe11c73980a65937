//! The web UI: static files embedded in the binary (`coordinator/ui/`: plain ES modules, no
//! build step; uPlot vendored) served at `/` and `/ui/…` without a token, and the images of a
//! job's output folder (`GET /v1/jobs/{id}/files/{name}`, a read like any other: token
//! required) for the pages to show. The pages call the API with the token the user gives them.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use spatiallock_protocol::api::ErrorBody;

use super::{AppState, UserCaller};
use crate::error::ApiError;

/// One embedded file of the UI.
struct Asset {
    /// Its path under `/ui/`.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI serves, embedded at compile time.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/app.css"),
    },
    Asset {
        path: "app.js",
        content_type: JS,
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "api.js",
        content_type: JS,
        body: include_bytes!("../../ui/api.js"),
    },
    Asset {
        path: "dom.js",
        content_type: JS,
        body: include_bytes!("../../ui/dom.js"),
    },
    Asset {
        path: "list.js",
        content_type: JS,
        body: include_bytes!("../../ui/list.js"),
    },
    Asset {
        path: "experiment.js",
        content_type: JS,
        body: include_bytes!("../../ui/experiment.js"),
    },
    Asset {
        path: "trial.js",
        content_type: JS,
        body: include_bytes!("../../ui/trial.js"),
    },
    Asset {
        path: "charts.js",
        content_type: JS,
        body: include_bytes!("../../ui/charts.js"),
    },
    Asset {
        path: "vendor/uplot/uPlot.iife.min.js",
        content_type: JS,
        body: include_bytes!("../../ui/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uplot/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uplot/uPlot.min.css"),
    },
    Asset {
        path: "vendor/uplot/LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uplot/LICENSE"),
    },
];

/// What the page may load: only this origin's scripts, styles and API; images from the API
/// arrive as `blob:` URLs (fetched with the bearer token).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'none'";

/// The largest image `GET /v1/jobs/{id}/files/{name}` answers with.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The UI's routes: `GET /` (the page), `GET /ui/{*path}` (its scripts, styles and the vendored
/// charting library) and `GET /v1/jobs/{id}/files/{name}` (a job's PNG images). Plain routes,
/// not in the OpenAPI document.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
        .route("/v1/jobs/{id}/files/{name}", get(job_file))
}

fn find_asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn asset_response(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Small files on a local or internal address: always revalidated, so an upgraded
    // coordinator's pages are never mixed with an older one's scripts.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.path == "index.html" {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        // Not `no-referrer`: under it browsers send `Origin: null` with the page's own writes,
        // which the guard of a coordinator without tokens refuses (api::csrf).
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    }
    response
}

/// `GET /`: the UI's page.
async fn index() -> Result<Response, ApiError> {
    find_asset("index.html")
        .map(asset_response)
        .ok_or_else(|| ApiError::not_found("UI file", "index.html"))
}

/// `GET /ui/{*path}`: a script, style sheet or vendored file of the UI.
async fn asset(Path(path): Path<String>) -> Result<Response, ApiError> {
    find_asset(&path)
        .map(asset_response)
        .ok_or_else(|| ApiError::not_found("UI file", &format!("/ui/{path}")))
}

/// 404 naming the file and why it cannot be served.
fn no_file(job: &str, name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        body: ErrorBody {
            error: format!("no file `{name}` for job `{job}`: {why}"),
            details: Vec::new(),
        },
    }
}

/// Checks a requested file name: one name at the top of the output folder (no `/`, `\`, `..`,
/// no hidden file); 400 otherwise. Whether it is an image is checked by the caller.
fn check_file_name(name: &str) -> Result<(), ApiError> {
    let plain = !name.is_empty()
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && !name.starts_with('.')
        && matches!(
            FsPath::new(name).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        );
    if plain {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid file name `{name}`: a file at the top of the job's output folder (no `/` or `..`), such as samples.png"
        )))
    }
}

/// Whether the UI may serve a file of this name: PNG images only (`samples.png`, …).
fn is_served_image(name: &str) -> bool {
    name.len() > 4 && name.to_ascii_lowercase().ends_with(".png")
}

/// The local folder of a `file://` output URI (`None` for any other scheme or a relative path).
fn local_output_dir(output: &str) -> Option<PathBuf> {
    let path = output.strip_prefix("file://")?;
    let path = PathBuf::from(path);
    path.is_absolute().then_some(path)
}

/// The file `name` of job `id`'s output folder `dir`, resolved as the OS does (symlinks
/// followed, in the folder's own path too): a regular file of at most [`MAX_FILE_BYTES`] that
/// lies inside the folder's resolved path. 403 for one that resolves outside it (a link out of
/// the folder); 404 naming the file for a missing folder or file, a dangling link, a folder or a
/// file too large.
async fn output_file(id: &str, dir: &FsPath, name: &str) -> Result<PathBuf, ApiError> {
    let resolve = |path: PathBuf, missing: String| async move {
        match tokio::fs::canonicalize(&path).await {
            Ok(resolved) => Ok(resolved),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_file(id, name, missing)),
            Err(e) => Err(no_file(id, name, format!("cannot read {}: {e}", path.display()))),
        }
    };
    let root = resolve(
        dir.to_path_buf(),
        format!("the output folder {} does not exist here", dir.display()),
    )
    .await?;
    let path = resolve(
        dir.join(name),
        format!("the output folder {} has no such file here", dir.display()),
    )
    .await?;
    if !path.starts_with(&root) {
        return Err(ApiError::forbidden(format!(
            "file `{name}` of job `{id}` resolves outside the job's output folder {}: not served",
            dir.display()
        )));
    }
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| no_file(id, name, format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(no_file(id, name, format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(no_file(
            id,
            name,
            format!(
                "{} has {} bytes, more than the {MAX_FILE_BYTES} served",
                path.display(),
                meta.len()
            ),
        ));
    }
    Ok(path)
}

/// `GET /v1/jobs/{id}/files/{name}`: a PNG image at the top of a finished job's output folder
/// (an evaluation's `samples.png`), when that folder is a `file://` URI this coordinator can
/// read (the embedded `spatiallock run`, or workers sharing its file system). 404 naming the file
/// otherwise (no output yet, an `s3://` or remote output, no such file); 400 for a name with `/`
/// or `..`; 403 for a file that resolves outside the output folder (see [`output_file`]).
async fn job_file(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_file_name(&name)?;
    if !is_served_image(&name) {
        return Err(no_file(&id, &name, "only PNG images (such as samples.png) are served"));
    }
    let job = state.store.get_job(&id).await?;
    let Some(output) = job.output else {
        return Err(no_file(
            &id,
            &name,
            format!("the job has no output yet (it is {})", job.state.as_str()),
        ));
    };
    let Some(dir) = local_output_dir(&output) else {
        return Err(no_file(
            &id,
            &name,
            format!("its output `{output}` is not a local file:// folder this coordinator can read"),
        ));
    };
    let path = output_file(&id, &dir, &name).await?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| no_file(&id, &name, format!("cannot read {}: {e}", path.display())))?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    // A retried evaluation writes the file again.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_file_is_embedded_with_a_type() {
        for path in ["index.html", "app.js", "app.css", "vendor/uplot/uPlot.iife.min.js"] {
            let asset = find_asset(path).unwrap_or_else(|| panic!("{path} is not embedded"));
            assert!(!asset.body.is_empty(), "{path} is empty");
        }
        assert!(find_asset("../Cargo.toml").is_none());
        assert!(find_asset("nope.js").is_none());
        for asset in ASSETS {
            let expected = match asset.path.rsplit('.').next() {
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("html") => "text/html",
                _ => "text/plain",
            };
            assert!(asset.content_type.starts_with(expected), "{}", asset.path);
        }
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        for asset in ASSETS
            .iter()
            .filter(|a| a.path.ends_with(".js") && !a.path.starts_with("vendor/"))
        {
            let text = std::str::from_utf8(asset.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let module = line.rsplit("from './").next().unwrap().trim_end_matches("';");
                assert!(
                    find_asset(module).is_some(),
                    "{} imports {module}, which is not embedded",
                    asset.path
                );
            }
        }
        let page = std::str::from_utf8(find_asset("index.html").unwrap().body).unwrap();
        for reference in page.split("\"/ui/").skip(1) {
            let path = reference.split('"').next().unwrap();
            assert!(
                find_asset(path).is_some(),
                "index.html loads /ui/{path}, which is not embedded"
            );
        }
    }

    #[test]
    fn file_names_stay_inside_the_output_folder() {
        for good in ["samples.png", "grid-0.png", "a..b.png"] {
            // `a..b.png` holds `..`: refused too, erring on the safe side.
            let result = check_file_name(good);
            assert_eq!(result.is_ok(), !good.contains(".."), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x.png",
            "a/b.png",
            "a\\b.png",
            ".hidden.png",
            "/etc/passwd",
        ] {
            let e = check_file_name(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.body.error.contains(&format!("`{bad}`")), "{}", e.body.error);
        }
        assert!(is_served_image("samples.png"));
        assert!(is_served_image("GRID.PNG"));
        assert!(!is_served_image("results.json"));
        assert!(!is_served_image(".png"));
    }

    #[test]
    fn only_local_absolute_outputs_are_read() {
        assert_eq!(
            local_output_dir("file:///runs/exp-1/eval-0"),
            Some(PathBuf::from("/runs/exp-1/eval-0"))
        );
        assert_eq!(local_output_dir("s3://bucket/exp-1/eval-0"), None);
        assert_eq!(local_output_dir("file://relative/path"), None);
        assert_eq!(local_output_dir("/runs/exp-1"), None);
    }

    #[tokio::test]
    async fn a_served_file_lies_inside_the_output_folder_whatever_the_links() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("samples.png"), b"png").unwrap();
        std::fs::write(tmp.path().join("secret.png"), b"secret").unwrap();
        std::os::unix::fs::symlink("../secret.png", out.join("escape.png")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.png"), out.join("absolute.png")).unwrap();
        std::os::unix::fs::symlink("samples.png", out.join("inside.png")).unwrap();
        std::os::unix::fs::symlink("nowhere.png", out.join("dangling.png")).unwrap();
        std::fs::create_dir(out.join("folder.png")).unwrap();
        // The output folder reached through a link of its own is still itself.
        std::os::unix::fs::symlink(&out, tmp.path().join("linked")).unwrap();
        let resolved = out.canonicalize().unwrap().join("samples.png");

        for (dir, name) in [
            (&out, "samples.png"),
            (&out, "inside.png"),
            (&tmp.path().join("linked"), "samples.png"),
        ] {
            let path = output_file("exp-1.eval-0", dir, name)
                .await
                .unwrap_or_else(|e| panic!("{name} in {}: {}", dir.display(), e.body.error));
            assert_eq!(path, resolved);
        }
        for name in ["escape.png", "absolute.png"] {
            let e = output_file("exp-1.eval-0", &out, name).await.unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{name}: {}", e.body.error);
            assert!(e.body.error.contains(&format!("`{name}`")), "{}", e.body.error);
            assert!(!e.body.error.contains("secret"), "{}", e.body.error);
        }
        for (dir, name, why) in [
            (out.clone(), "dangling.png", "no such file"),
            (out.clone(), "missing.png", "no such file"),
            (out.clone(), "folder.png", "not a regular file"),
            (tmp.path().join("gone"), "samples.png", "does not exist"),
        ] {
            let e = output_file("exp-1.eval-0", &dir, name).await.unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{name}: {}", e.body.error);
            assert!(e.body.error.contains(why), "{name}: {}", e.body.error);
        }
    }

    #[test]
    fn a_missing_file_is_a_404_naming_it() {
        let e = no_file("exp-1.eval-0", "samples.png", "its output is in s3");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.body.error.contains("`samples.png`"), "{}", e.body.error);
        assert!(e.body.error.contains("`exp-1.eval-0`"), "{}", e.body.error);
    }
}
