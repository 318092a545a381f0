//! The gateway as the unit file runs it: an unprivileged user with exactly CAP_BPF,
//! CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (through `setpriv`), the data plane
//! attached (native XDP) to a veth in a namespace, the proxy serving on port 80, and an
//! operator in the pins' group reading `gateway stats` without root. Without one of the
//! capabilities, start-up names it. The users and the group are made by the test and
//! removed after it, also when it fails.

use gateway_tests::gateway::{bin, GatewayProcess};
use gateway_tests::netns::{in_netns, tag, NetnsPair, TestNet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

const CAPS: &str = "bpf,perfmon,net_admin,net_bind_service";

/// Users and a group made for one test; removed on drop.
struct Accounts {
    group: String,
    users: Vec<String>,
}

impl Accounts {
    fn new(t: &str) -> Self {
        let group = format!("gwg{t}");
        let mut made = Accounts {
            group: group.clone(),
            users: Vec::new(),
        };
        made.remove();
        run(Command::new("groupadd").args(["--system", &group]));
        // The service user (primary group: the pins' group), an operator in that group, and
        // someone else.
        for (user, groups) in [
            (format!("gws{t}"), vec!["--gid", &group]),
            (
                format!("gwo{t}"),
                vec!["--gid", "nogroup", "--groups", &group],
            ),
            (format!("gwx{t}"), vec!["--gid", "nogroup"]),
        ] {
            run(Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin"])
                .args(&groups)
                .arg(&user));
            made.users.push(user);
        }
        made
    }

    fn service(&self) -> &str {
        &self.users[0]
    }

    /// `setpriv` arguments that run a command as `user` with its groups and `caps` as its
    /// inheritable, ambient and bounding sets (nothing else).
    fn as_user(&self, user: &str, caps: &str) -> Vec<String> {
        let set = |c: &str| match c {
            "" => "-all".to_string(),
            c => format!(
                "-all,{}",
                c.split(',')
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        vec![
            "setpriv".into(),
            format!("--reuid={user}"),
            format!(
                "--regid={}",
                if user == self.service() {
                    &self.group
                } else {
                    "nogroup"
                }
            ),
            "--init-groups".into(),
            format!("--inh-caps={}", set(caps)),
            format!("--ambient-caps={}", set(caps)),
            format!("--bounding-set={}", set(caps)),
        ]
    }

    fn remove(&self) {
        for u in ["gws", "gwo", "gwx"] {
            let name = format!("{u}{}", &self.group[3..]);
            let _ = Command::new("userdel").arg(&name).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upstream on 127.0.0.1 inside `ns` answering `ok` to each request, for up to 60 s.
fn upstream(ns: &str) -> SocketAddr {
    let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0"))
        .expect("enter netns")
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    addr
}

fn config(
    net: &TestNet,
    accounts: &Accounts,
    pin: &str,
    upstream: SocketAddr,
) -> std::path::PathBuf {
    // The state file lives in a directory of the service user's (as /var/lib/gateway would).
    let state = net.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    run(Command::new("chown")
        .arg(format!("{}:{}", accounts.service(), accounts.group))
        .arg(&state));
    let path = net
        .dir
        .join(format!("{}.toml", pin.rsplit('/').next().unwrap_or("gw")));
    std::fs::write(
        &path,
        format!(
            "[ebpf]\ninterface = \"{}\"\nmode = \"xdp\"\npin_path = \"{pin}\"\npin_group = \"{}\"\n\
             state_file = \"{}\"\n\n[listen]\nhttp = [\"{}:80\"]\n\n\
             [[upstream]]\nname = \"a\"\nservers = [\"{upstream}\"]\n\n\
             [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"none\"\n",
            net.pair.server_if,
            accounts.group,
            state.join("deny-state.json").display(),
            NetnsPair::SERVER4,
        ),
    )
    .expect("write config");
    path
}

#[test]
fn unprivileged_user_with_four_capabilities_runs_everything() {
    let Some(net) = TestNet::new(
        "unprivileged_user_with_four_capabilities_runs_everything",
        "nr",
    ) else {
        return;
    };
    let accounts = Accounts::new(&tag("r"));
    let pin = format!("{}/gateway", net.fs.dir.display());
    let up = upstream(&net.pair.server);
    let config = config(&net, &accounts, &pin, up);
    let wrapper = accounts.as_user(accounts.service(), CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut gw = GatewayProcess::start_wrapped(
        &net.pair.server,
        &wrapper,
        &config,
        &net.dir.join("gateway.log"),
    )
    .expect("gateway starts as an unprivileged user");
    gw.wait_for(
        "proxy listening on http://10.77.0.1:80",
        Duration::from_secs(20),
    )
    .expect("proxy on port 80");
    let log = gw.log_text();
    assert!(!log.contains("ERROR"), "{log}");

    // The proxy serves, through the attached XDP program.
    let answer = in_netns(&net.pair.client, || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((NetnsPair::SERVER4, 80)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("enter netns")
    .expect("request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // The pins belong to the group, readable and writable by it, by no one else.
    let gid = std::fs::metadata(&pin).expect("pin dir").gid();
    for entry in std::fs::read_dir(&pin).expect("pins") {
        let meta = entry.expect("entry").metadata().expect("meta");
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid));
    }
    assert_eq!(std::fs::metadata(&pin).unwrap().mode() & 0o777, 0o750);

    // A member of the group reads the counters without root or capabilities.
    let operator = accounts.as_user(&accounts.users[1], "");
    let out = Command::new(&operator[0])
        .args(&operator[1..])
        .arg(bin())
        .args(["stats", "--json", "--pin-path", &pin])
        .output()
        .expect("run stats");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "operator: {stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        stats["totals"]["packets"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    // Someone outside the group cannot.
    let other = accounts.as_user(&accounts.users[2], "");
    let out = Command::new(&other[0])
        .args(&other[1..])
        .arg(bin())
        .args(["stats", "--json", "--pin-path", &pin])
        .output()
        .expect("run stats");
    assert!(!out.status.success(), "outsider read the pins");

    let status = gw.stop().expect("exit status");
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
}

#[test]
fn a_missing_capability_is_named() {
    let Some(net) = TestNet::new("a_missing_capability_is_named", "nc") else {
        return;
    };
    let accounts = Accounts::new(&tag("c"));
    let up = upstream(&net.pair.server);
    for (without, expect) in [
        (
            "bpf",
            "missing capability CAP_BPF: creating the maps and loading the programs",
        ),
        (
            "perfmon",
            "missing capability CAP_PERFMON: the verifier accepts the programs' pointer arithmetic",
        ),
        (
            "net_admin",
            "missing capability CAP_NET_ADMIN: loading networking programs (XDP, TC) and attaching",
        ),
    ] {
        let pin = format!("{}/no-{without}", net.fs.dir.display());
        let config = config(&net, &accounts, &pin, up);
        let caps: Vec<&str> = CAPS.split(',').filter(|c| *c != without).collect();
        let wrapper = accounts.as_user(accounts.service(), &caps.join(","));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.pair.server])
            .args(&wrapper)
            .arg(bin())
            .args(["run", "--config"])
            .arg(&config);
        let out = cmd.output().expect("run gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {without}: {stderr}");
        assert!(stderr.contains(expect), "without {without}: {stderr}");
        assert!(
            stderr.lines().count() <= 3,
            "without {without}: a short message, not a verifier dump: {stderr}"
        );
    }
}
