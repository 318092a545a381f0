//! The operational log on stderr, in `[log] format`: `text` (tracing's own format: time,
//! level, target, message, fields) or `json` (one object per line with the same parts).

use crate::config::LogFormat;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Logs go to stderr in `format`; `RUST_LOG` filters (default `info`). Only the first call
/// of a process takes effect.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// `{"time":..,"level":..,"target":..,"message":..,<fields>,"spans":[..]}` per event.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut text = String::with_capacity(256);
        let mut put = |k: &str, v: &serde_json::Value| {
            text.push(if text.is_empty() { '{' } else { ',' });
            text.push_str(&serde_json::Value::from(k).to_string());
            text.push(':');
            text.push_str(&v.to_string());
        };
        put("time", &time.into());
        put("level", &meta.level().as_str().into());
        put("target", &meta.target().into());
        put("message", &fields.message.unwrap_or_default().into());
        let spans: Vec<serde_json::Value> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| span.name().into())
            .collect();
        if !spans.is_empty() {
            put("spans", &spans.into());
        }
        // The event's fields after the fixed keys (a field named like one is prefixed).
        for (k, v) in &fields.values {
            match *k {
                "time" | "level" | "target" | "message" | "spans" => put(&format!("field.{k}"), v),
                k => put(k, v),
            }
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// An event's message and fields as JSON values.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    values: Vec<(&'static str, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.push((field.name(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_parse_with_time_level_target_message_and_fields() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let addr: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
            tracing::info!(target: "gateway", %addr, tls = true, "proxy listening on https://{addr}");
            let span = tracing::info_span!("reload");
            let _g = span.enter();
            tracing::warn!(
                n = 3u64,
                ratio = 0.5,
                message2 = "a \"quoted\"\nline",
                "two\nlines"
            );
            tracing::error!(level = "mine", "a field named like a key");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["target"], "gateway");
        assert_eq!(
            first["message"],
            "proxy listening on https://127.0.0.1:8443"
        );
        assert_eq!(first["addr"], "127.0.0.1:8443");
        assert_eq!(first["tls"], true);
        let time = first["time"].as_str().expect("time");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(time.len(), "2026-12-05T06:48:03.123Z".len(), "{time}");
        let second = &lines[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "two\nlines");
        assert_eq!(second["n"], 3);
        assert_eq!(second["ratio"], 0.5);
        assert_eq!(second["message2"], "a \"quoted\"\nline");
        assert_eq!(second["spans"], serde_json::json!(["reload"]));
        assert_eq!(lines[2]["level"], "ERROR");
        assert_eq!(lines[2]["field.level"], "mine");
    }
}
