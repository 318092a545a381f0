//! Running under a service manager: systemd's readiness protocol, spoken by the real binary
//! to a datagram socket the test binds (as systemd does for `Type=notify`).

use gateway_tests::gateway::GatewayProcess;
use nix::sys::signal::Signal;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

const CONFIG: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
                      [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
                      [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n";

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[test]
fn readiness_reload_and_stop_reach_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, CONFIG).expect("write config");

    let mut gw = GatewayProcess::start_proxy(
        &config,
        &dir.path().join("gw.log"),
        1,
        &[("NOTIFY_SOCKET", sock_path.as_os_str())],
    )
    .expect("gateway starts");
    let ready = next(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    // READY=1 comes after the listeners accept.
    let addr = gw.listener(false).expect("plain listener");
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("listening when ready");
    // Nothing else was sent before it.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    assert!(socket.recv(&mut buf).is_err(), "one message at start-up");
    socket.set_nonblocking(false).expect("blocking");

    gw.signal(Signal::SIGHUP).expect("SIGHUP");
    let reloading = next(&socket);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC: {reloading}"));
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    let now_usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
    assert!(
        usec <= now_usec && now_usec - usec < 20_000_000,
        "{usec} vs {now_usec}"
    );
    let after = next(&socket);
    assert!(after.starts_with("READY=1\n"), "{after}");

    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    let stopping = next(&socket);
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("wait")
        .expect("exited");
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
}

#[test]
fn without_notify_socket_nothing_is_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    // A NOTIFY_SOCKET nobody listens on: the gateway serves anyway, and says why not once.
    let mut gw = GatewayProcess::start_proxy(
        &config,
        &dir.path().join("gw.log"),
        1,
        &[("NOTIFY_SOCKET", dir.path().join("nobody").as_os_str())],
    )
    .expect("gateway starts");
    gw.wait_for("cannot notify systemd", Duration::from_secs(10))
        .expect("the failed send is logged");
    let addr = gw.listener(false).expect("plain listener");
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("serving");
    assert!(gw.stop().is_some_and(|s| s.success()), "{}", gw.log_text());
}

/// `deploy/systemd/gateway.service` passes `systemd-analyze verify` without a single
/// complaint (an unknown or misspelt key is only a warning there, so stderr must be empty),
/// and asks for what the README promises.
#[test]
fn the_unit_file_verifies_and_grants_only_the_capabilities_needed() {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/gateway.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit file");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=gateway",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE",
        "StateDirectory=gateway",
        "RuntimeDirectory=gateway",
        "ConfigurationDirectory=gateway",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`");
    }
    // verify checks that the executables exist: point them at the binary under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("gateway.service");
    let bin = gateway_tests::gateway::bin();
    std::fs::write(
        &copy,
        text.replace("/usr/bin/gateway", &bin.display().to_string()),
    )
    .expect("write the unit copy");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package `systemd`; `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "complaints: {stderr}");

    // The check is real: a misspelt key is reported.
    std::fs::write(
        &copy,
        text.replace("NoNewPrivileges=", "NoNewPrivilege=")
            .replace("/usr/bin/gateway", &bin.display().to_string()),
    )
    .expect("write the unit copy");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key 'NoNewPrivilege'"));
}
