//! The CLI contract that needs no privileges: bad input is refused with one line and exit
//! status 2, missing maps are reported in one line, configs are checked with file, line and
//! key.

use gateway_tests::gateway::cli;

fn one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line, got: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

#[test]
fn deny_refuses_bad_input_before_touching_maps() {
    // The pin path does not exist: input errors must be reported first, with status 2.
    let pin = ["--pin-path", "/nonexistent/gateway"];
    for (args, needle) in [
        (vec!["deny", "add", "not-an-ip"], "is not an IP address"),
        (vec!["deny", "add", "10.0.0.0/33"], "prefix length 33"),
        (vec!["deny", "add", "2001:db8::/129"], "prefix length 129"),
        (vec!["deny", "add", "10.0.0.1/8"], "host bits set"),
        (
            vec!["deny", "add", "10.0.0.1", "--ttl", "soon"],
            "invalid --ttl",
        ),
        (
            vec!["deny", "add", "10.0.0.1", "--ttl", "0s"],
            "longer than zero",
        ),
        (vec!["deny", "del", "300.1.1.1"], "is not an IP address"),
    ] {
        let mut a = args.clone();
        a.extend(pin);
        one_line_error(&a, 2, needle);
    }
    let long = "x".repeat(65);
    one_line_error(
        &[
            "deny",
            "add",
            "10.0.0.1",
            "--reason",
            &long,
            "--pin-path",
            "/nonexistent/g",
        ],
        2,
        "at most 64",
    );
}

#[test]
fn missing_maps_are_reported_in_one_line() {
    for args in [
        vec!["stats", "--pin-path", "/nonexistent/gateway"],
        vec!["deny", "list", "--pin-path", "/nonexistent/gateway"],
        vec![
            "deny",
            "add",
            "10.0.0.1",
            "--pin-path",
            "/nonexistent/gateway",
        ],
    ] {
        one_line_error(
            &args,
            1,
            "no gateway has pinned maps at /nonexistent/gateway",
        );
    }
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[ebpf]\ninterface = \"eth0\"\nsyn_rat = 10\n").unwrap();
    let p = path.display().to_string();
    one_line_error(
        &["config", "check", "--config", &p],
        2,
        &format!("{p}:3: ebpf.syn_rat: unknown field"),
    );
    one_line_error(&["run", "--config", &p], 2, &format!("{p}:3: ebpf.syn_rat"));
    // The pin path of a config is used by stats/deny, and a bad config is refused.
    one_line_error(&["stats", "--config", &p], 2, "ebpf.syn_rat");

    std::fs::write(
        &path,
        "[ebpf]\ninterface = \"eth0\"\nmode = \"xdp-native\"\n",
    )
    .unwrap();
    one_line_error(
        &["config", "check", "--config", &p],
        2,
        &format!("{p}:3: ebpf.mode: unknown variant"),
    );

    std::fs::write(&path, "[ebpf]\ninterface = \"eth0\"\n").unwrap();
    let out = cli(&["config", "check", "--config", &p]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{p}: ok")
    );

    one_line_error(
        &["config", "check", "--config", "/nonexistent.toml"],
        2,
        "cannot read config file /nonexistent.toml",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `config check` reads what `run` would read, and refuses what `run` would refuse.
#[test]
fn config_check_refuses_what_run_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    let p = path.display().to_string();

    std::fs::write(&path, "# only a comment\n\n").unwrap();
    one_line_error(
        &["config", "check", "--config", &p],
        2,
        &format!("{p}: the file is empty (only comments and blank lines): nothing to run"),
    );
    one_line_error(&["run", "--config", &p], 2, "the file is empty");

    let text = "[listen]\nhttps = [\"127.0.0.1:0\"]\n\n[tls]\n[[tls.certificates]]\n\
                cert = \"/nonexistent/gw.crt\"\nkey = \"/nonexistent/gw.key\"\n\n\
                [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
                [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n";
    std::fs::write(&path, text).unwrap();
    one_line_error(
        &["config", "check", "--config", &p],
        2,
        &format!(
            "{p}:6: tls.certificates[0].cert: cannot read certificates from /nonexistent/gw.crt"
        ),
    );
    // The same file, without the files it names: valid.
    let out = cli(&["config", "check", "--skip-files", "--config", &p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{p}: ok")
    );
}

#[test]
fn stats_watch_bounds_are_checked_before_the_maps() {
    let pin = ["--pin-path", "/nonexistent/gateway"];
    for (args, needle) in [
        (
            vec!["stats", "--watch", "0"],
            "--watch needs at least 1 second",
        ),
        (
            vec!["stats", "--watch", "1", "--count", "0"],
            "--count needs at least 1 sample",
        ),
    ] {
        let mut a = args.clone();
        a.extend(pin);
        one_line_error(&a, 2, needle);
    }
    // --count bounds --watch and means nothing without it (clap's usage error).
    let mut a = vec!["stats", "--count", "2"];
    a.extend(pin);
    let out = cli(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--watch"), "{err}");
    assert!(out.stdout.is_empty());
}
