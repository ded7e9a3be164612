//! A real browser for the console's tests: headless Chromium driven through
//! ChromeDriver's WebDriver HTTP API (Debian's `chromium` and `chromium-driver`;
//! `scripts/test.sh` installs them). `BATCHPLANE_CHROMIUM` and
//! `BATCHPLANE_CHROMEDRIVER` name other binaries.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    driver: Child,
    stopped: bool,
    http: reqwest::Client,
    session: String,
    base: String,
    _profile: PathBuf,
}

fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

impl Browser {
    /// A fresh headless Chromium (its own empty profile) behind its own ChromeDriver.
    pub async fn start() -> Browser {
        let chromium = find("BATCHPLANE_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("no Chromium: install Debian's chromium and chromium-driver (scripts/test.sh does as root), or set BATCHPLANE_CHROMIUM"));
        let chromedriver = find("BATCHPLANE_CHROMEDRIVER", &["chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver: install Debian's chromium-driver (scripts/test.sh does as root), or set BATCHPLANE_CHROMEDRIVER"));
        let port = free_port();
        use std::os::unix::process::CommandExt;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping the browser kills Chromium with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let profile = crate::scratch_dir("chromium-profile");
        let mut browser = Browser {
            driver,
            stopped: false,
            http,
            session: String::new(),
            base,
            _profile: profile.clone(),
        };
        let began = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await;
            if let Ok(r) = ready {
                if r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
                {
                    break;
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The flags this machine's closed network needs: without them Chromium reaches
        // out at start and its refused connections fill the log.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            // No crash handler: it would run as a daemon of its own and outlive the test.
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--no-first-run",
            "--window-size=1280,1800",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let created = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args},
                    "goog:loggingPrefs": {"browser": "ALL"},
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {created}"))
            .to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let resp = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    fn at(&self, what: &str) -> String {
        format!("/session/{}/{what}", self.session)
    }

    pub async fn open(&self, url: &str) {
        self.call("POST", &self.at("url"), json!({"url": url}))
            .await;
    }

    /// Run `script` in the page (a function body; `arguments` are `args`).
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.at("execute/sync"),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The text of the first element `selector` finds, once it contains `want`.
    pub async fn wait_for_text(&self, selector: &str, want: &str, timeout: Duration) -> String {
        self.wait_until(selector, &format!("{want:?}"), timeout, |t| {
            t.contains(want)
        })
        .await
    }

    /// The text of the first element `selector` finds, once `check` holds of it
    /// (`what` says what is awaited, for the failure).
    pub async fn wait_until(
        &self,
        selector: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let began = Instant::now();
        loop {
            let text = self
                .script(
                    "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                    json!([selector]),
                )
                .await;
            if let Some(t) = text.as_str() {
                if check(t) {
                    return t.to_string();
                }
            }
            if began.elapsed() > timeout {
                let page = self.text().await;
                panic!("{selector} never showed {what} (it shows {text}); the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The page's text as a user sees it.
    pub async fn text(&self) -> String {
        self.script("return document.body.innerText", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.at("screenshot"), Value::Null).await;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("a screenshot that is not base64: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// What the page logged at SEVERE since the last call (errors in its script, and
    /// requests that failed), each as `source: message`.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .call("POST", &self.at("se/log"), json!({"type": "browser"}))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| {
                format!(
                    "{}: {}",
                    e["source"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// End the session (Chromium exits) and stop ChromeDriver.
    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        self.kill();
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // ChromeDriver leads its own process group: Chromium goes with it. (The system
        // call, not the `kill` command: procps-ng 4.0's `kill -KILL -PGID` signals every
        // process there is.)
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
