//! The Debian package (`cargo xtask dist`), installed for real with dpkg: the files where the
//! package puts them, the user and group its postinst creates, the installed binary checking
//! and serving the installed configuration (as the service user, in a namespace of its own),
//! the manual pages, the completions, the unit verified; a reinstall and an upgrade that keep
//! a modified conffile; remove and purge that leave nothing behind.
//!
//! The package is `$GATEWAY_DEB` (`cargo xtask test` builds it and sets it), else the one
//! `target/dist/gateway_*.deb` (`cargo xtask dist`). Privileged (dpkg, users, namespaces):
//! it refuses to run where a `gateway` package, user or group already exists, and purges the
//! package and removes the user, the group and the namespace even when it fails.
//!
//! The shipped configuration's contract (it parses, and has every section of the reference
//! configuration) is checked by the unprivileged tests at the end.

use gateway_tests::netns::{in_netns, tag, NetnsPair};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONFFILE: &str = "/etc/gateway/gateway.toml";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package under test.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_DEB") {
        return PathBuf::from(p);
    }
    let dist = workspace().join("target/dist");
    let found: Vec<PathBuf> = std::fs::read_dir(&dist)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("gateway_") && n.ends_with(".deb"))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => one.clone(),
        _ => panic!(
            "no single package in {} (found {found:?}): build it with `cargo xtask dist`, or \
             set GATEWAY_DEB (`cargo xtask test` does both)",
            dist.display()
        ),
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exists(path: &str) -> bool {
    Path::new(path).symlink_metadata().is_ok()
}

fn getent(db: &str, name: &str) -> Option<Vec<String>> {
    let out = output(Command::new("getent").args([db, name]));
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

/// `dpkg-query` status and version of the package, `None` when dpkg does not know it.
fn package_state() -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", "gateway"]));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything the test may leave on the machine, removed on drop: the package (purged), the
/// user and group its postinst made, the runtime directory and the namespace.
struct Cleanup {
    ns: Option<NetnsPair>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.ns = None;
        if package_state().is_some() {
            let _ = output(Command::new("dpkg").args(["--purge", "gateway"]));
        }
        let _ = output(Command::new("userdel").arg("gateway"));
        let _ = output(Command::new("groupdel").arg("gateway"));
        let _ = std::fs::remove_dir_all("/run/gateway");
        let _ = std::fs::remove_dir_all("/var/lib/gateway");
    }
}

/// `setpriv` arguments: run as `user` (with its groups), no capabilities at all.
fn as_user(user: &str, group: &str) -> Vec<String> {
    vec![
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--init-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
    ]
}

#[test]
fn package_installs_serves_upgrades_and_purges_cleanly() {
    if !gateway_tests::privileged::require("package_installs_serves_upgrades_and_purges_cleanly") {
        return;
    }
    let deb = deb();
    assert!(deb.is_file(), "{} does not exist", deb.display());
    // Not on a machine where the gateway is installed or its account exists: the test would
    // remove them, and could not tell what the package made.
    assert_eq!(
        package_state(),
        None,
        "a gateway package is installed here; the test does not touch it"
    );
    for (db, name) in [("passwd", "gateway"), ("group", "gateway")] {
        assert!(
            getent(db, name).is_none(),
            "{db} `gateway` exists here; the test needs a machine without it"
        );
    }
    for path in ["/etc/gateway", "/run/gateway", "/var/lib/gateway"] {
        assert!(
            !exists(path),
            "{path} exists here; the test needs a machine without it"
        );
    }
    let mut cleanup = Cleanup { ns: None };
    let version = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version"))
    .trim()
    .to_owned();

    // ---- install
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(
        package_state().as_deref(),
        Some(format!("install ok installed {version}").as_str())
    );
    let listed: Vec<String> = ok(Command::new("dpkg").args(["-L", "gateway"]))
        .lines()
        .map(str::to_owned)
        .collect();
    for (path, mode) in [
        ("/usr/bin/gateway", 0o755),
        ("/usr/lib/systemd/system/gateway.service", 0o644),
        (CONFFILE, 0o644),
        ("/usr/share/man/man1/gateway.1.gz", 0o644),
        ("/usr/share/man/man1/gateway-config-check.1.gz", 0o644),
        ("/usr/share/bash-completion/completions/gateway", 0o644),
        ("/usr/share/zsh/vendor-completions/_gateway", 0o644),
        ("/usr/share/fish/vendor_completions.d/gateway.fish", 0o644),
        ("/usr/share/doc/gateway/copyright", 0o644),
        ("/usr/share/doc/gateway/examples/gateway.toml", 0o644),
    ] {
        assert!(listed.iter().any(|l| l == path), "dpkg -L lacks {path}");
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.is_file(), "{path}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} owned by root");
    }
    assert!(
        ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "gateway"]))
            .contains(CONFFILE),
        "{CONFFILE} is a conffile"
    );
    // Every file matches the package's md5sums.
    let verify = ok(Command::new("dpkg").args(["--verify", "gateway"]));
    assert!(verify.trim().is_empty(), "dpkg --verify: {verify}");
    // Which listed paths were there before (shared directories such as /usr/bin): the rest
    // must be gone after the purge. dpkg -L lists what the package holds; for directories
    // that existed before, their presence now says nothing, so record them by name.
    let shared_dirs = [
        "/.",
        "/etc",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/lib/systemd",
        "/usr/lib/systemd/system",
        "/usr/share",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/man/man1",
        "/usr/share/bash-completion",
        "/usr/share/bash-completion/completions",
        "/usr/share/zsh",
        "/usr/share/zsh/vendor-completions",
        "/usr/share/fish",
        "/usr/share/fish/vendor_completions.d",
    ];
    let own: Vec<&String> = listed
        .iter()
        .filter(|l| !shared_dirs.contains(&l.as_str()))
        .collect();

    // ---- the account postinst made: a system user and group, no login, no home made.
    let user = getent("passwd", "gateway").expect("postinst creates the user gateway");
    let group = getent("group", "gateway").expect("postinst creates the group gateway");
    let uid: u32 = user[2].parse().expect("uid");
    assert!(uid > 0 && uid < 1000, "a system uid: {user:?}");
    assert_eq!(
        user[3], group[2],
        "primary group gateway: {user:?} {group:?}"
    );
    assert_eq!(user[5], "/var/lib/gateway", "{user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    assert!(
        !exists("/var/lib/gateway"),
        "no home made (systemd's StateDirectory)"
    );
    let etc = std::fs::metadata("/etc/gateway").expect("/etc/gateway");
    assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        (etc.uid(), etc.gid().to_string()),
        (0, group[2].clone()),
        "/etc/gateway: root:gateway"
    );

    // ---- the installed binary, with the installed config (the default path).
    let v = ok(Command::new("/usr/bin/gateway").arg("--version"));
    assert_eq!(v.trim(), format!("gateway {version}"));
    let check = output(Command::new("/usr/bin/gateway").args(["config", "check"]));
    assert!(check.status.success(), "{check:?}");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("{CONFFILE}: ok")
    );
    assert!(
        check.stderr.is_empty(),
        "no warnings: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // As the service's ExecStartPre runs it: the user gateway reads it through the group...
    ok(Command::new("setpriv")
        .args(as_user("gateway", "gateway"))
        .args(["/usr/bin/gateway", "config", "check"]));
    // ...and other users cannot (certificates and keys live there too).
    let nobody = output(
        Command::new("setpriv")
            .args(as_user("nobody", "nogroup"))
            .args(["/usr/bin/gateway", "config", "check"]),
    );
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert_eq!(nobody.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(CONFFILE) && stderr.to_lowercase().contains("permission denied"),
        "{stderr}"
    );

    // ---- the installed config serves: in a namespace of its own (its ports are fixed), as
    // the user gateway without capabilities, with /run/gateway as systemd's
    // RuntimeDirectory= makes it, and an application on 127.0.0.1:8000.
    let ns = NetnsPair::new(&tag("pkg")).expect("namespace");
    let server = ns.server.clone();
    cleanup.ns = Some(ns);
    std::fs::create_dir("/run/gateway").expect("mkdir /run/gateway");
    let gid: u32 = group[2].parse().expect("gid");
    std::os::unix::fs::chown("/run/gateway", Some(uid), Some(gid)).expect("chown /run/gateway");
    app_upstream(&server);
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut gw = Command::new("ip")
        .args(["netns", "exec", &server, "setpriv"])
        .args(as_user("gateway", "gateway"))
        .args(["/usr/bin/gateway", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("spawn the installed gateway");
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let proxied = loop {
        if let Some(status) = gw.try_wait().expect("wait") {
            panic!("the gateway exited ({status}):\n{}", log_text());
        }
        if let Ok(answer) = get(&server, 8080, "/hello") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no answer on 127.0.0.1:8080 within 20 s:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        proxied.starts_with("HTTP/1.1 200") && proxied.ends_with("from the app"),
        "{proxied}"
    );
    let health = get(&server, 9901, "/healthz").expect("admin endpoint");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let socket = std::fs::metadata("/run/gateway/admin.sock").expect("the admin socket");
    assert_eq!(socket.uid(), uid, "admin.sock made by the service user");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gw.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = gw.kill();
            panic!("the gateway did not stop within 20 s:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", log_text());
    cleanup.ns = None;
    std::fs::remove_dir_all("/run/gateway").expect("rm /run/gateway");

    // ---- manual pages: found by man, readable, and groff has nothing to say about them.
    let path = ok(Command::new("man").args(["-w", "gateway"]));
    assert_eq!(path.trim(), "/usr/share/man/man1/gateway.1.gz");
    let page = ok(Command::new("man")
        .args(["-P", "cat", "gateway"])
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8"));
    for want in [
        "gateway-config(1)",
        "FILES",
        CONFFILE,
        "RUST_LOG",
        version.as_str(),
    ] {
        assert!(page.contains(want), "gateway(1) lacks {want}:\n{page}");
    }
    let page = ok(Command::new("man")
        .args(["-P", "cat", "gateway-config-check"])
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8"));
    assert!(page.contains("--skip-files"), "{page}");
    for page in listed.iter().filter(|l| l.ends_with(".1.gz")) {
        let out = output(
            Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
                .arg(page)
                .env("LC_ALL", "C.UTF-8")
                .env("MANROFFSEQ", ""),
        );
        assert!(out.status.success(), "{page}: {out:?}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{page}: {warnings}");
    }

    // ---- completions: bash completes subcommands and their subcommands.
    // bash, not sh: arrays.
    let complete = |words: &str| ok(Command::new("bash").args(["-c", &complete_script(words)]));
    assert_eq!(complete("gateway con").trim(), "config");
    assert_eq!(complete("gateway config ch").trim(), "check");
    assert!(complete("gateway deny ''").lines().any(|l| l == "add"));
    let zsh = std::fs::read_to_string("/usr/share/zsh/vendor-completions/_gateway").unwrap();
    assert!(
        zsh.starts_with("#compdef gateway"),
        "{}",
        &zsh[..80.min(zsh.len())]
    );
    let fish = std::fs::read_to_string("/usr/share/fish/vendor_completions.d/gateway.fish")
        .expect("fish completions");
    assert!(fish.contains("complete -c gateway"), "fish completions");

    // ---- the installed unit verifies, Documentation=man:gateway(1) included.
    let out = output(
        Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/gateway.service"]),
    );
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{complaints}");
    assert!(complaints.trim().is_empty(), "complaints: {complaints}");

    // ---- a reinstall keeps a modified conffile, and says nothing about it.
    let mut modified = std::fs::read_to_string(CONFFILE).expect("read conffile");
    modified.push_str("# changed by the operator\n");
    std::fs::write(CONFFILE, &modified).expect("modify conffile");
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), modified);
    assert!(!exists("/etc/gateway/gateway.toml.dpkg-dist"));

    // ---- an upgrade whose conffile changed too: the operator's stays (--force-confold, as
    // a non-interactive upgrade answers), the new one is left beside it; postinst leaves the
    // account as it was.
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    ok(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree));
    let upgraded = format!("{version}+upgrade1");
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {upgraded}\n"),
        ),
    )
    .expect("write control");
    let shipped = tree.join("etc/gateway/gateway.toml");
    let mut new_conffile = std::fs::read_to_string(&shipped).expect("shipped conffile");
    new_conffile.push_str("# new in the upgrade\n");
    std::fs::write(&shipped, &new_conffile).expect("change shipped conffile");
    let new_deb = work.path().join("gateway_upgrade.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&tree)
        .arg(&new_deb));
    ok(Command::new("dpkg")
        .args(["--force-confold", "-i"])
        .arg(&new_deb));
    assert_eq!(
        package_state().as_deref(),
        Some(format!("install ok installed {upgraded}").as_str())
    );
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), modified);
    assert_eq!(
        std::fs::read_to_string("/etc/gateway/gateway.toml.dpkg-dist").expect(".dpkg-dist"),
        new_conffile
    );
    assert_eq!(getent("passwd", "gateway"), Some(user.clone()));
    assert_eq!(getent("group", "gateway"), Some(group.clone()));

    // ---- remove: the files go, the configuration stays.
    // What the service would have made, for the purge to remove.
    std::fs::create_dir("/var/lib/gateway").expect("mkdir /var/lib/gateway");
    std::fs::write("/var/lib/gateway/deny-state.json", "{}").expect("deny state");
    ok(Command::new("dpkg").args(["-r", "gateway"]));
    assert_eq!(
        package_state().as_deref(),
        Some(format!("deinstall ok config-files {upgraded}").as_str())
    );
    for path in &own {
        if path.as_str() != CONFFILE && path.as_str() != "/etc/gateway" {
            assert!(!exists(path), "{path} is left after dpkg -r");
        }
    }
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), modified);

    // ---- purge: nothing of the package is left; the account stays (Debian practice).
    ok(Command::new("dpkg").args(["-P", "gateway"]));
    assert_eq!(package_state(), None, "dpkg forgot the package");
    for path in own
        .iter()
        .map(|p| p.as_str())
        .chain(["/etc/gateway/gateway.toml.dpkg-dist", "/var/lib/gateway"])
    {
        assert!(!exists(path), "{path} is left after dpkg -P");
    }
    assert_eq!(getent("passwd", "gateway"), Some(user));
    drop(cleanup);
    assert!(getent("passwd", "gateway").is_none() && getent("group", "gateway").is_none());
}

fn complete_script(words: &str) -> String {
    format!(
        ". /usr/share/bash-completion/completions/gateway; COMP_WORDS=({words}); \
         COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
         _gateway gateway \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
}

/// The application behind the shipped config: 127.0.0.1:8000 inside `ns`, answering
/// `from the app` to each request, for at most 16 connections and 60 s.
fn app_upstream(ns: &str) {
    let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:8000"))
        .expect("enter netns")
        .expect("bind 127.0.0.1:8000");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 16 && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    served += 1;
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = "from the app";
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

/// `GET path` on 127.0.0.1:port inside `ns`; the whole answer.
fn get(ns: &str, port: u16, path: &str) -> std::io::Result<String> {
    in_netns(ns, || {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .map_err(std::io::Error::other)?
}

// ---- the shipped configuration's contract (unprivileged)

fn shipped_config() -> PathBuf {
    workspace().join("deploy/debian/gateway.toml")
}

/// The file the package installs passes `gateway config check` as it is, files included
/// (it names none), without a warning: it is what the service starts with.
#[test]
fn the_shipped_config_passes_check_without_warnings() {
    let out = Command::new(gateway_tests::gateway::bin())
        .args(["config", "check", "--config"])
        .arg(shipped_config())
        .stdin(Stdio::null())
        .output()
        .expect("run gateway config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim_end()
        .ends_with(": ok"));
}

/// Every section of the reference configuration (`examples/gateway.toml`) is introduced in
/// the shipped one, in effect or commented out: a new section of the config contract needs
/// a word there too.
#[test]
fn the_shipped_config_covers_every_section_of_the_reference() {
    let headers = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter(|l| l.starts_with('[') && l.ends_with(']') && !l.contains(' '))
            .map(str::to_owned)
            .collect()
    };
    let reference = std::fs::read_to_string(workspace().join("examples/gateway.toml"))
        .expect("examples/gateway.toml");
    let shipped = std::fs::read_to_string(shipped_config()).expect("shipped config");
    let shipped_headers = headers(&shipped);
    let reference_headers = headers(&reference);
    assert!(reference_headers.len() >= 10, "{reference_headers:?}");
    let missing: Vec<&String> = reference_headers
        .iter()
        .filter(|h| !shipped_headers.contains(h))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/debian/gateway.toml lacks {missing:?}"
    );
}
