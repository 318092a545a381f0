//! Shell completions and manual pages, generated from the command line definition so that
//! they never disagree with `--help`. The package build (`cargo xtask dist`) runs these
//! hidden subcommands on the binary it packages; nothing generated is committed.

use super::common::{emit, fail, EXIT_FAILURE};
use clap::Command;
use clap_complete::Shell;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Appended to gateway(1): where an installed gateway keeps its files, which clap does not
/// know. Roff; kept in step with `deploy/` (the package test reads the installed page).
const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/gateway/gateway.toml\fR
The configuration (TOML) that \fBgateway run\fR and \fBgateway config check\fR read by
default. The package installs a commented one that proxies 127.0.0.1:8080 to
127.0.0.1:8000; every key, with its default and meaning, is in
\fI/usr/share/doc/gateway/examples/gateway.toml\fR.
.TP
\fI/usr/lib/systemd/system/gateway.service\fR
The unit: \fBgateway run\fR as the user \fBgateway\fR with CAP_BPF, CAP_NET_ADMIN,
CAP_PERFMON and CAP_NET_BIND_SERVICE. \fBsystemctl enable \-\-now gateway\fR starts it,
\fBsystemctl reload gateway\fR re\-reads the configuration (SIGHUP).
.TP
\fI/var/lib/gateway/deny\-state.json\fR
The deny list's durable copy, restored at start.
.TP
\fI/run/gateway/admin.sock\fR
The admin endpoint on a Unix socket, when the configuration asks for it; \fBgateway
stats\fR and \fBgateway deny\fR use it first.
.TP
\fI/sys/fs/bpf/gateway\fR
The pinned maps of the data plane, shared with the group \fBgateway\fR.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter of \fBgateway run\fR (default \fIinfo\fR); logs go to stderr.
"#;

/// `gateway completions SHELL`: the completion script on stdout.
pub fn completions(mut cmd: Command, shell: Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "gateway", &mut script);
    match emit(&String::from_utf8_lossy(&script)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// `gateway man DIR`: gateway.1 and one page per subcommand (gateway-config-check.1, ...)
/// written into DIR, which is created if missing.
pub fn man(cmd: Command, dir: &Path) -> ExitCode {
    match write_man_pages(cmd, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            EXIT_FAILURE,
            format!("cannot write manual pages to {}: {e}", dir.display()),
        ),
    }
}

fn write_man_pages(cmd: Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let top = dir.join(format!("{}.1", cmd.get_name()));
    clap_mangen::generate_to(cmd, dir)?;
    let mut page = std::fs::OpenOptions::new().append(true).open(top)?;
    page.write_all(FILES_SECTION.as_bytes())?;
    page.flush()
}
