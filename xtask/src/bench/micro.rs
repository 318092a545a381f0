//! Section 1 and 2: the criterion benchmarks of the gateway crate (`jwt`, `dataplane`,
//! `xdp_live`), read back from `target/criterion/**/new/estimates.json` (median point
//! estimate, ns).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Ctx;
use crate::cmd::{self, Cmd};

/// Runs one criterion bench target with bounded times.
fn run_bench(ctx: &Ctx, name: &str, measurement_secs: u32) -> Result<()> {
    Cmd::new("cargo")
        .cwd(&ctx.root)
        .without_cargo_run_env()
        .env("GATEWAY_EBPF_OBJECT", &ctx.ebpf_object)
        .args(["bench", "--locked", "-p", "gateway", "--bench", name, "--"])
        .args(["--warm-up-time", "1", "--measurement-time"])
        .arg(measurement_secs.to_string())
        .run()
        .with_context(|| format!("criterion bench `{name}` failed"))
}

/// The median point estimate (ns) of `target/criterion/<id>/new/estimates.json`.
pub fn median_ns(criterion_dir: &Path, id: &str) -> Option<f64> {
    let path = criterion_dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    parse_median(&text)
}

/// `"median": { ..., "point_estimate": X, ... }` without a JSON library: the first
/// `point_estimate` after the `"median"` key (its confidence interval comes first, but holds
/// no `point_estimate`).
fn parse_median(text: &str) -> Option<f64> {
    let start = text.find("\"median\"")?;
    let rest = &text[start..];
    let at = rest.find("\"point_estimate\"")?;
    let after = rest[at + "\"point_estimate\"".len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = after
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(after.len());
    after[..end].parse().ok()
}

fn criterion_dir(root: &Path) -> PathBuf {
    cmd::host_target_dir(root).join("criterion")
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// JWT verification per algorithm against the raw ring verify of the same signature.
pub fn jwt(ctx: &Ctx) -> Result<String> {
    run_bench(ctx, "jwt", if ctx.quick { 1 } else { 3 })?;
    let dir = criterion_dir(&ctx.root);
    let mut md = String::from(
        "### JWT verification (criterion, `gateway/benches/jwt.rs`)\n\n\
         | algorithm | ring verify floor ns | gateway verify ns | × floor | overhead ns |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for alg in ["RS256-2048", "PS256-2048", "ES256", "EdDSA", "HS256"] {
        let floor = median_ns(&dir, &format!("{alg}/ring_floor"));
        let verify = median_ns(&dir, &format!("{alg}/verify"));
        let over = match (verify, floor) {
            (Some(v), Some(f)) => format!("{:.0}", v - f),
            _ => "–".into(),
        };
        md += &format!(
            "| {alg} | {} | {} | {} | {over} |\n",
            fmt(floor),
            fmt(verify),
            ratio(verify, floor)
        );
    }
    let hit = median_ns(&dir, "cache_hit");
    let rs_floor = median_ns(&dir, "RS256-2048/ring_floor");
    md += &format!(
        "| verified-token cache hit (10 000 cached) | – | {} | {} of the RS256 floor | |\n",
        fmt(hit),
        ratio(hit, rs_floor)
    );
    md += "\nMedians of criterion's samples (ns per call), one process, no parallel load from the bench.\n";
    Ok(md)
}

/// Data plane ns/packet through BPF_PROG_TEST_RUN, with the floor programs.
pub fn dataplane(ctx: &Ctx) -> Result<String> {
    if !cmd::is_root() {
        return Ok(
            "### Data plane per packet\n\nSkipped: `BPF_PROG_TEST_RUN` needs root.\n".into(),
        );
    }
    run_bench(ctx, "dataplane", if ctx.quick { 1 } else { 3 })?;
    let dir = criterion_dir(&ctx.root).join("xdp_per_packet");
    let floor = median_ns(&dir, "floor_xdp_pass");
    let lookup = median_ns(&dir, "floor_one_hash_lookup");
    let mut md = String::from(
        "### Data plane per packet (criterion, `gateway/benches/dataplane.rs`, BPF_PROG_TEST_RUN)\n\n\
         | path | ns/packet | × floor | × one lookup |\n| --- | ---: | ---: | ---: |\n",
    );
    for (id, label) in [
        ("floor_xdp_pass", "floor: `XDP_PASS` only"),
        ("floor_one_hash_lookup", "reference: one hash lookup"),
        ("pass_known_source", "pass, known source"),
        ("drop_deny_hit", "drop, exact deny hit"),
        ("drop_cidr", "drop, CIDR deny hit"),
        ("syn_token_taken", "SYN to a protected port, token taken"),
    ] {
        let v = median_ns(&dir, id);
        md += &format!(
            "| {label} | {} | {} | {} |\n",
            fmt(v),
            ratio(v, floor),
            ratio(v, lookup)
        );
    }
    md += "\n";
    md += &live(ctx)?;
    Ok(md)
}

/// The live-frames path (`gateway/benches/xdp_live.rs`): ns per received frame with the
/// generator's own cost subtracted, against the bare XDP_DROP and nftables.
fn live(ctx: &Ctx) -> Result<String> {
    run_bench(ctx, "xdp_live", if ctx.quick { 1 } else { 3 })?;
    let dir = criterion_dir(&ctx.root).join("xdp_live");
    let gen = median_ns(&dir, "generator_alone");
    let net = |id: &str| match (median_ns(&dir, id), gen) {
        (Some(v), Some(g)) => Some(v - g),
        _ => None,
    };
    let bare = net("bare_xdp_drop");
    let ours = net("gateway_xdp_deny");
    let mut md = format!(
        "### Drop per packet on the live-frames path (criterion, `gateway/benches/xdp_live.rs`)\n\n\
         Frames sent with `BPF_PROG_TEST_RUN` in live-frames mode, redirected out of one end of \
         a veth pair, so the other end's XDP program runs before any skb exists. Generator alone \
         (frames to a veth whose peer is down): {} ns per frame, subtracted below.\n\n\
         | receiver | ns/received frame | × bare XDP_DROP | × our XDP deny |\n\
         | --- | ---: | ---: | ---: |\n",
        fmt(gen)
    );
    for (id, label) in [
        ("bare_xdp_drop", "bare `XDP_DROP`"),
        ("read_xdp_drop", "16 frame bytes read, then `XDP_DROP`"),
        ("lookup_xdp_drop", "one hash lookup, then `XDP_DROP`"),
        ("gateway_xdp_deny", "gateway XDP, deny hit"),
        (
            "nft_netdev_ingress",
            "`XDP_PASS` + nftables netdev ingress drop",
        ),
        (
            "nft_inet_prerouting",
            "`XDP_PASS` + nftables inet prerouting drop",
        ),
        ("gateway_tc_deny", "`XDP_PASS` + gateway TC, deny hit"),
    ] {
        let v = net(id);
        md += &format!(
            "| {label} | {} | {} | {} |\n",
            fmt(v),
            ratio(v, bare),
            ratio(v, ours)
        );
    }
    Ok(md)
}

/// Bans as the list grows (`gateway/benches/bans.rs`): time per ban over 50 000 /64 bans,
/// and a control client's latency without bans, with them, and while they all expire. The
/// bench prints its figures; they are quoted as printed.
pub fn bans(ctx: &Ctx) -> Result<String> {
    if !cmd::is_root() {
        return Ok("### Bans as the list grows\n\nSkipped: pinning BPF maps needs root.\n".into());
    }
    let out = Cmd::new("cargo")
        .cwd(&ctx.root)
        .without_cargo_run_env()
        .env("GATEWAY_EBPF_OBJECT", &ctx.ebpf_object)
        .args([
            "bench", "--locked", "-p", "gateway", "--bench", "bans", "--",
        ])
        .args(["--warm-up-time", "1", "--measurement-time", "1"])
        .probe()
        .context("criterion bench `bans` failed")?;
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("bans/") && (l.contains(": ") || l.contains(" = ")))
        .collect();
    let mut md = String::from(
        "### Bans as the list grows (`gateway/benches/bans.rs`, real pinned maps)\n\n```\n",
    );
    for l in lines {
        md += l;
        md.push('\n');
    }
    md += "```\n";
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_point_estimate() {
        let text = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},
        "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":62.4,"upper_bound":65.7},"point_estimate":63.87,"standard_error":0.8},
        "median_abs_dev":{"point_estimate":7.6}}"#;
        assert_eq!(parse_median(text), Some(63.87));
        assert_eq!(parse_median("{}"), None);
    }
}
