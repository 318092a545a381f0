//! A minimal Chrome DevTools Protocol client for tests that look at a page in a real
//! browser: headless Chromium (Debian's `chromium`) started in a network namespace and
//! driven over `--remote-debugging-pipe`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Headless Chromium with one page, spoken to through the DevTools pipe: the browser reads
/// NUL-terminated JSON messages on its fd 3 and writes them on its fd 4, which a shell maps
/// to our stdin and stdout pipes.
pub struct Browser {
    child: Child,
    input: ChildStdin,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events received while waiting for answers, oldest first.
    events: Vec<Value>,
    log: PathBuf,
}

impl Browser {
    pub fn launch(netns: &str, dir: &Path) -> Result<Self> {
        let profile = dir.join("chromium-profile");
        let log = dir.join("chromium.log");
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --no-first-run \
             --no-default-browser-check --disable-extensions --disable-background-networking \
             --disable-component-update --disable-sync --hide-scrollbars --mute-audio \
             --user-data-dir='{}' --remote-debugging-pipe about:blank \
             3<&0 4>&1 0</dev/null 1>&2",
            profile.display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context(
                "start chromium (Debian package `chromium`, installed by `cargo xtask setup`)",
            )?;
        let input = child.stdin.take().context("stdin")?;
        let output = child.stdout.take().context("stdout")?;
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Self {
            child,
            input,
            messages,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            log,
        };
        let target = b.call_browser("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_owned();
        let attached = b.call_browser(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(domain, json!({}))?;
        }
        Ok(b)
    }

    pub fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.input.write_all(&bytes).context("write to chromium")?;
        self.input.flush()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if m["id"] == id => {
                    if let Some(e) = m.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(m["result"].clone());
                }
                Ok(m) => {
                    if m.get("method").is_some() {
                        self.events.push(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer within 30 s"),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "{method}: chromium went away:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    pub fn call_browser(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, params, false)
    }

    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, params, true)
    }

    /// Evaluates `expr` in the page (promises awaited); its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy (an exception counts as not yet: the page may still
    /// be loading); its value.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = match self.eval(expr) {
                Ok(v) => v,
                Err(e) => json!(format!("exception: {e}")),
            };
            let exception = v.as_str().is_some_and(|s| s.starts_with("exception: "));
            if !(exception || v.is_null() || v == false || v == "" || v == 0) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("`{expr}` still {v} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A real mouse click at the centre of the element `selector` (scrolled into view).
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()",
            sel = json!(selector)
        ))?;
        let (x, y) = (
            rect["x"]
                .as_f64()
                .with_context(|| format!("{selector} not found"))?,
            rect["y"].as_f64().context("y")?,
        );
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )?;
        }
        Ok(())
    }

    /// Viewport size and colour scheme; `mobile` emulates a phone.
    pub fn emulate(&mut self, width: u32, height: u32, mobile: bool, scheme: &str) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )?;
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )?;
        Ok(())
    }

    /// The whole page as PNG, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        let png = base64_decode(r["data"].as_str().context("screenshot data")?)?;
        if png.get(..8) != Some(b"\x89PNG\r\n\x1a\n".as_slice()) {
            bail!("the screenshot is not a PNG");
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Console calls, exceptions and log entries at error level, received so far.
    pub fn errors(&mut self) -> Vec<String> {
        while let Ok(m) = self.messages.try_recv() {
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        Some(format!("exception: {}", p["exceptionDetails"]))
                    }
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
                        "log ({}): {} {}",
                        p["entry"]["source"], p["entry"]["text"], p["entry"]["url"]
                    )),
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call_browser("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding), as CDP sends binary data.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {c}"),
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&full[..chunk.len().saturating_sub(1)]);
    }
    Ok(out)
}
