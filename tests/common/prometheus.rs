//! Prometheus as the end-to-end tests use it: its HTTP API (targets, instant and range
//! queries), the address it bound, what a Grafana dashboard asks of it (every PromQL expression
//! with its panel, Grafana's variables substituted) and the metric names an expression selects,
//! and the closing table of what each panel and rule returned.
#![allow(dead_code)] // not every test file uses every helper

use std::collections::BTreeSet;

use serde_json::Value;

use super::processes::now_s;

/// Grafana's interval variables, as a dashboard over this short run would see them.
pub const GRAFANA_INTERVALS: &[(&str, &str)] = &[
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("${__range}", "1h"),
    ("$__range", "1h"),
];

/// The address Prometheus bound, from its own log at `info` level (`msg="Listening on"
/// address=HOST:PORT`): with `--web.listen-address=127.0.0.1:0` the kernel picks a free port
/// and nothing can take it between the choice and the bind.
pub fn listening_address(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("msg=\"Listening on\""))
        .find_map(|l| l.split_whitespace().find_map(|field| field.strip_prefix("address=")))
        .map(|a| a.trim_matches('"').to_string())
        .filter(|a| !a.ends_with(":0"))
}

/// Prometheus' HTTP API.
pub struct Prometheus {
    /// `http://HOST:PORT`.
    pub base: String,
    pub http: reqwest::Client,
}

impl Prometheus {
    /// `GET path?query` as JSON (Prometheus answers errors as JSON too); `Null` when it cannot be
    /// reached.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Value {
        let Ok(response) = self.http.get(format!("{}{path}", self.base)).query(query).send().await else {
            return Value::Null;
        };
        response.json().await.unwrap_or(Value::Null)
    }

    /// The active targets' (job, health) pairs.
    pub async fn targets(&self) -> Vec<(String, String)> {
        let v = self.get("/api/v1/targets", &[("state", "active".into())]).await;
        v["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        (
                            t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                            t["health"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether each scrape job of `wanted` has exactly that many targets, all up; and the
    /// targets seen.
    pub async fn up(&self, wanted: &[(&str, usize)]) -> (bool, String) {
        let targets = self.targets().await;
        let up = |job: &str| targets.iter().filter(|(j, h)| j == job && h == "up").count();
        let all = |job: &str| targets.iter().filter(|(j, _)| j == job).count();
        let ok = wanted.iter().all(|(job, n)| up(job) == *n && all(job) == *n);
        (ok, format!("{targets:?}"))
    }

    pub async fn instant(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr.to_string())]).await
    }

    /// `expr` over `[start, now]` at a 1 s step (coarser over long runs: Prometheus answers at
    /// most 11,000 points per series).
    pub async fn range(&self, expr: &str, start: f64) -> Value {
        let end = now_s();
        let step = ((end - start) / 10_000.0).max(1.0);
        self.get(
            "/api/v1/query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step:.3}")),
            ],
        )
        .await
    }
}

/// Whether a `[time, "value"]` pair of a query answer holds a finite number (not `NaN`, as a
/// quantile of no observations or `0/0` gives, nor an infinity).
fn finite(point: &Value) -> bool {
    point[1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// The number of series with a number in a query answer's `data` (a series whose every value is
/// `NaN` or infinite counts as none; a scalar counts 1, a string 1).
pub fn series_count(data: &Value) -> usize {
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map_or(0, |series| series.iter().filter(|s| finite(&s["value"])).count()),
        Some("matrix") => data["result"].as_array().map_or(0, |series| {
            series
                .iter()
                .filter(|s| s["values"].as_array().is_some_and(|v| v.iter().any(finite)))
                .count()
        }),
        Some("scalar") => usize::from(finite(&data["result"])),
        Some("string") => 1,
        _ => 0,
    }
}

/// Evaluates `expr`: at the current time, and over the whole run (from `start`, in Unix
/// seconds) when that has no numbers (per-trial and per-job series are removed when their job
/// ends; a rate over a quiet last minute is `NaN`). The count of series with numbers and how it
/// was found, or why there is none.
pub async fn evaluate(prom: &Prometheus, expr: &str, start: f64) -> Result<(usize, &'static str), String> {
    let now = prom.instant(expr).await;
    if now["status"] != "success" {
        return Err(format!("query failed: {} {}", now["errorType"], now["error"]));
    }
    let n = series_count(&now["data"]);
    if n > 0 {
        return Ok((n, "instant"));
    }
    let over_run = prom.range(expr, start).await;
    if over_run["status"] != "success" {
        return Err(format!(
            "range query failed: {} {}",
            over_run["errorType"], over_run["error"]
        ));
    }
    match series_count(&over_run["data"]) {
        0 => Err("no numbers (no series, or only NaN), neither now nor at any time of the run".into()),
        n => Ok((n, "range")),
    }
}

/// Every `expr` of a Grafana dashboard with the title of the panel it belongs to (the nearest
/// enclosing object with a `title`).
pub fn panel_queries(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                if !expr.trim().is_empty() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            for v in map.values() {
                panel_queries(v, title, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| panel_queries(v, title, out)),
        _ => {}
    }
}

/// A dashboard expression as Prometheus gets it: Grafana's interval variables replaced
/// ([`GRAFANA_INTERVALS`]) and every other template variable (`$name`, `${name}`,
/// `${name:format}`, `[[name]]`) replaced by `.*`, i.e. "All".
pub fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in GRAFANA_INTERVALS {
        s = s.replace(var, value);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'{') => match chars[i..].iter().position(|c| *c == '}') {
                Some(end) => {
                    out += ".*";
                    i += end + 1;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            },
            '$' if chars.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                out += ".*";
                i += 1;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
            }
            '[' if chars.get(i + 1) == Some(&'[') => {
                let rest: String = chars[i + 2..].iter().collect();
                match rest.find("]]") {
                    Some(end) if rest[..end].chars().all(ident) && end > 0 => {
                        out += ".*";
                        i += 2 + rest[..end].chars().count() + 2;
                    }
                    _ => {
                        out.push('[');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Skips from `chars[i]`, an opening `open`, past its matching `close` (strings inside are
/// skipped whole); the index after it.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

/// Skips the string literal starting at `chars[i]`; the index after its closing quote.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The metric names a PromQL expression selects: the identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names (inside `{…}` or the parentheses of
/// `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`), strings, numbers or
/// durations. (A name given only as `{__name__="…"}` is not seen.)
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (5m, 1h30m, 1e3, 0x1f).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let before_paren = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if before_paren {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if !before_paren && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// One line of the closing table.
pub struct Row {
    /// `panel`, `rule` or `  metric`.
    pub kind: &'static str,
    /// The panel's title, the rule's or the metric's name.
    pub name: String,
    /// How many series had numbers (`-` when skipped).
    pub series: String,
    /// How they were found (`instant`, `range`, `ok`, `FAILED`, or why skipped).
    pub how: &'static str,
    /// The expression.
    pub what: String,
}

/// The widest of `title` and `f` over the rows.
fn width(rows: &[Row], f: impl Fn(&Row) -> usize, title: usize) -> usize {
    rows.iter().map(f).max().unwrap_or(0).max(title)
}

/// The rows as an aligned text table with a header line.
pub fn table(rows: &[Row]) -> String {
    let kind = width(rows, |r| r.kind.len(), 4);
    let name = width(rows, |r| r.name.chars().count(), 4);
    let series = width(rows, |r| r.series.len(), 6);
    let how = width(rows, |r| r.how.len(), 3);
    let mut out = format!(
        "{:kind$}  {:name$}  {:>series$}  {:how$}  EXPRESSION / METRIC\n",
        "KIND", "NAME", "SERIES", "HOW"
    );
    for r in rows {
        let pad = name.saturating_sub(r.name.chars().count());
        out += &format!(
            "{:kind$}  {}{}  {:>series$}  {:how$}  {}\n",
            r.kind,
            r.name,
            " ".repeat(pad),
            r.series,
            r.how,
            r.what.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    out
}
