//! A real browser for the portal's tests: Debian's headless Chromium driven through
//! chromedriver over WebDriver (W3C), with a few dozen lines of client instead of a crate. Each
//! [`Browser`] is its own chromedriver and Chromium with a fresh profile; at most two run at
//! once (two cores). Without Chromium, chromedriver or axe-core the tests fail with the command
//! that installs them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{free_port, wait_until};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Browsers running at once in this test process.
static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(2));

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// The program `what` at `$env` or `default`, or a failure naming the install command.
fn installed(what: &str, env: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.into()));
    assert!(
        path.exists(),
        "the portal's browser tests need {what} at {} ({env} overrides): install it with `{INSTALL}`; \
         `cargo test -- --skip portal_browser` runs the rest",
        path.display()
    );
    path
}

/// A script that starts `chromium` so that it dies with its parent, chromedriver: Chromium
/// outlives a killed chromedriver otherwise. `setpriv` is util-linux's, on every Debian.
fn launcher(chromium: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("chromium-launcher");
    let script = format!(
        "#!/bin/sh\nexec setpriv --pdeathsig KILL '{}' \"$@\"\n",
        chromium.display()
    );
    std::fs::write(&path, script).expect("writing the launcher");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// axe-core's browser script: `AXE_CORE_JS`, or where `.ci/run` installs it.
pub fn axe_source() -> String {
    let path = std::env::var("AXE_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("webhook-dispatcher-ci/axe-core/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the accessibility check needs axe-core at {} ({e}; AXE_CORE_JS overrides): install it with \
             `npm install --prefix ~/.cache/webhook-dispatcher-ci/axe-core axe-core@4.11.0`",
            path.display()
        )
    })
}

/// One headless Chromium, through its own chromedriver.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    _slot: SemaphorePermit<'static>,
}

/// A page element found in the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// A browser with a desktop-sized window.
    pub async fn start() -> Browser {
        Browser::start_sized(1280, 900).await
    }

    pub async fn start_sized(width: u32, height: u32) -> Browser {
        let binary = installed("Chromium", "CHROMIUM", "/usr/bin/chromium");
        let driver_path = installed("chromedriver", "CHROMEDRIVER", "/usr/bin/chromedriver");
        let slot = SLOTS.acquire().await.expect("the semaphore stays open");
        let port = free_port();
        let mut command = tokio::process::Command::new(driver_path);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with the Chromium it starts: dropping the browser (a
            // failed test included) kills them all.
            .process_group(0)
            .kill_on_drop(true);
        // A test process that exits without dropping it (`std::process::exit`, a harness's
        // SIGKILL) takes chromedriver along, and chromedriver Chromium (see `launcher`).
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let driver = command.spawn().expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_until(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async {
                http.get(format!("{base}/status"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        let binary = launcher(&binary, profile.path());
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args},
            "timeouts": {"implicit": 5000, "pageLoad": 30000, "script": 30000},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new WebDriver session")
            .json()
            .await
            .expect("WebDriver answers JSON");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver started no session: {created}"))
            .to_string();
        let browser = Browser {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            _profile: profile,
            _slot: slot,
        };
        browser.set_size(width, height).await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
            .json()
            .await
            .expect("WebDriver answers JSON");
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn title(&self) -> String {
        self.get("/title")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the page's first heading reads `expected` (after a click that navigates).
    pub async fn wait_heading(&self, expected: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let script =
                "const h = document.querySelector('h1'); return h ? h.innerText.trim() : ''";
            let heading = self.execute(script, json!([])).await;
            if heading.as_str() == Some(expected) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the page's heading is {heading}, not {expected:?}, at {}: {}",
                    self.url().await,
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page has an element matching `css` (a form post answered with the same
    /// heading shows only by what it adds).
    pub async fn wait_for(&self, css: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while self.count(css).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no {css} at {}: {}",
                self.url().await,
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.find("body").await.text().await
    }

    async fn locate(&self, using: &str, value: &str) -> Element<'_> {
        let found = self
            .post("/element", json!({"using": using, "value": value}))
            .await;
        self.element(&found)
    }

    /// The element a WebDriver answer refers to.
    fn element(&self, found: &Value) -> Element<'_> {
        Element {
            browser: self,
            id: found[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element reference in {found}"))
                .to_string(),
        }
    }

    /// The first element `css` selects (waiting up to 5 s for it).
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.locate("css selector", css).await
    }

    /// Every element `css` selects now (no wait).
    pub async fn count(&self, css: &str) -> usize {
        let script = "return document.querySelectorAll(arguments[0]).length";
        self.execute(script, json!([css]))
            .await
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// The button (or link styled as one) whose text is `text`.
    pub async fn button(&self, text: &str) -> Element<'_> {
        let xpath = format!(
            "//button[normalize-space()={q}] | //a[normalize-space()={q}]",
            q = xpath_literal(text)
        );
        self.locate("xpath", &xpath).await
    }

    /// The same within the element `css` selects (a card in a list).
    pub async fn button_in(&self, css: &str, text: &str) -> Element<'_> {
        let container = self.find(css).await;
        let xpath = format!(
            ".//button[normalize-space()={q}] | .//a[normalize-space()={q}]",
            q = xpath_literal(text)
        );
        let found = self
            .post(
                &format!("/element/{}/element", container.id),
                json!({"using": "xpath", "value": xpath}),
            )
            .await;
        self.element(&found)
    }

    /// Clicks the button or link whose text is `text` — in this portal each one loads a page —
    /// and waits until the next page has replaced this one (a form post answered with the same
    /// heading would otherwise pass for its answer).
    pub async fn click(&self, text: &str) {
        let button = self.button(text).await;
        self.execute("window.__before_click = true; return null", json!([]))
            .await;
        button.click().await;
        self.wait_for_next_page().await;
    }

    /// Waits until the page marked before a click is gone and the new one has loaded.
    pub async fn wait_for_next_page(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let loaded = json!({
            "script": "return window.__before_click === undefined && document.readyState === 'complete'",
            "args": [],
        });
        loop {
            // A script run while the old document unloads may fail: that is "not yet".
            let answer: Option<Value> = match self
                .http
                .post(format!("{}/execute/sync", self.session))
                .json(&loaded)
                .send()
                .await
            {
                Ok(response) => response.json().await.ok(),
                Err(_) => None,
            };
            if answer.is_some_and(|a| a["value"] == json!(true)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the click loaded no new page at {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The form control labelled `label` (its `<label for>`; the text may go on, as in a hint).
    pub async fn field(&self, label: &str) -> Element<'_> {
        let xpath = format!(
            "//*[@id=//label[starts-with(normalize-space(), {q})]/@for]",
            q = xpath_literal(label)
        );
        self.locate("xpath", &xpath).await
    }

    /// Types `value` into the field labelled `label`, replacing what it held.
    pub async fn fill(&self, label: &str, value: &str) {
        let field = self.field(label).await;
        field.clear().await;
        field.type_text(value).await;
    }

    /// Runs `script` in the page with `args`; what it returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Runs axe-core on the current page; the violations of impact serious or critical, each as
    /// `id (impact): help — targets`.
    pub async fn serious_accessibility_violations(&self, axe: &str) -> Vec<String> {
        self.execute(axe, json!([])).await;
        let script = "const done = arguments[arguments.length - 1];\
             axe.run(document, {resultTypes: ['violations']})\
               .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')\
                 .map(v => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)))\
               .catch(e => done(['axe failed: ' + e]));";
        let found = self
            .post("/execute/async", json!({"script": script, "args": []}))
            .await;
        found
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_else(|| vec![format!("axe answered {found}")])
    }

    /// How much wider than the window the page is, in CSS pixels (0: no sideways scrolling).
    pub async fn overflow_x(&self) -> i64 {
        let script =
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth";
        self.execute(script, json!([]))
            .await
            .as_i64()
            .unwrap_or(i64::MAX)
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("PNG decodes");
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Ends the session (Chromium exits cleanly); dropping stops the rest.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self
            .driver
            .id()
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
        {
            // SAFETY: kill(2) on our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Element<'_> {
    pub async fn click(&self) {
        self.browser
            .post(&format!("/element/{}/click", self.id), json!({}))
            .await;
    }

    pub async fn clear(&self) {
        self.browser
            .post(&format!("/element/{}/clear", self.id), json!({}))
            .await;
    }

    pub async fn type_text(&self, text: &str) {
        self.browser
            .post(
                &format!("/element/{}/value", self.id),
                json!({"text": text}),
            )
            .await;
    }

    pub async fn text(&self) -> String {
        self.browser
            .get(&format!("/element/{}/text", self.id))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn property(&self, name: &str) -> Value {
        self.browser
            .get(&format!("/element/{}/property/{name}", self.id))
            .await
    }
}

/// `text` as an XPath string literal (XPath 1 has no escapes: `concat` around quotes).
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        return format!("'{text}'");
    }
    let parts: Vec<String> = text.split('\'').map(|p| format!("'{p}'")).collect();
    format!("concat({})", parts.join(", \"'\", "))
}
