//! tollgate-authz's web console in a real browser: the node driver `tests/browser/driver.mjs`
//! (playwright-core on Debian's headless chromium, both installed by `scripts/setup.sh`), run
//! one step at a time so a test can act through Envoy between two steps.
//!
//! Every step fails the test when it fails in the browser or when the page reported anything a
//! working console never causes (console error, uncaught exception, CSP violation, failed load).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::paths::{chromium_bin, node_bin, project_root};

/// Longest a step may take (the driver's own waits are shorter, so a stuck page reports why).
const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// `tests/browser/`: the driver and its npm package.
pub fn driver_dir() -> PathBuf {
    project_root().join("tests/browser")
}

/// Where screenshots go: `<target dir>/browser-screenshots/<test>/`.
pub fn screenshot_dir(test: &str) -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<exe>");
    target.join("browser-screenshots").join(test)
}

/// A running driver with one browser page.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// Screenshots the steps saved, in order.
    pub screenshots: Vec<PathBuf>,
}

impl Browser {
    /// Starts the driver; screenshots go to `screenshots`.
    pub async fn start(screenshots: &Path) -> anyhow::Result<Browser> {
        let dir = driver_dir();
        if !dir.join("node_modules/playwright-core").is_dir() || !chromium_bin().exists() {
            bail!(
                "the browser tests need {} and {}: run scripts/setup.sh",
                dir.join("node_modules/playwright-core").display(),
                chromium_bin().display()
            );
        }
        std::fs::create_dir_all(screenshots)?;
        let log = screenshots.join("driver.log");
        let mut child = Command::new(node_bin())
            .arg(dir.join("driver.mjs"))
            .arg("--screenshots")
            .arg(screenshots)
            .current_dir(&dir)
            .env("TOLLGATE_CHROMIUM", chromium_bin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("spawning the browser driver (node)")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Ok(Browser {
            child,
            stdin,
            lines,
            log,
            screenshots: Vec::new(),
        })
    }

    /// Runs one step and returns its result; panics (with the driver's log) when the step fails
    /// or the page reported a problem.
    pub async fn step(&mut self, step: &str, args: Value) -> Value {
        let reply = match self.send(step, args).await {
            Ok(r) => r,
            Err(e) => panic!("browser step {step}: {e:#}\n{}", self.driver_log()),
        };
        if let Some(shot) = reply["screenshot"].as_str() {
            eprintln!("browser screenshot: {shot}");
        }
        assert!(
            reply["ok"] == true,
            "browser step {step} failed: {}\n{}",
            reply["error"].as_str().unwrap_or_default(),
            self.driver_log()
        );
        let problems = reply["problems"].as_array().cloned().unwrap_or_default();
        assert!(
            problems.is_empty(),
            "the page reported problems during {step}: {problems:#?}"
        );
        let result = reply["result"].clone();
        self.note_screenshots(&result);
        result
    }

    /// Saves a screenshot of the page now.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let path = self.step("screenshot", json!({"name": name})).await;
        PathBuf::from(path.as_str().expect("a path"))
    }

    async fn send(&mut self, step: &str, args: Value) -> anyhow::Result<Value> {
        let line = format!("{}\n", json!({"step": step, "args": args}));
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(STEP_DEADLINE, self.lines.next_line())
            .await
            .with_context(|| format!("no answer within {STEP_DEADLINE:?}"))??
            .context("the driver exited")?;
        serde_json::from_str(&reply).with_context(|| format!("driver said: {reply}"))
    }

    fn note_screenshots(&mut self, result: &Value) {
        let found = match result {
            Value::String(s) if s.ends_with(".png") => vec![s.clone()],
            Value::Object(m) => m
                .get("screenshot")
                .and_then(Value::as_str)
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for shot in found {
            println!("browser screenshot: {shot}");
            self.screenshots.push(PathBuf::from(shot));
        }
    }

    fn driver_log(&self) -> String {
        format!(
            "----- browser driver log ({}) -----\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Closes the browser and waits for the driver to exit.
    pub async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
