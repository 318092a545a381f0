use super::*;

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

#[test]
fn view_matches_addresses_prefixes_and_expiry() {
    let store = DenyStore::new(None, None, vec!["192.0.2.0/24".parse().unwrap()]);
    store
        .add(t("198.51.100.7"), None, "manual", "t", 1)
        .unwrap();
    store
        .add(
            t("2001:db8::/32"),
            Some(Duration::from_secs(60)),
            "manual",
            "t",
            1,
        )
        .unwrap();
    assert!(store.is_denied("198.51.100.7".parse().unwrap()));
    assert!(
        store.is_denied("::ffff:198.51.100.7".parse().unwrap()),
        "IPv4-mapped"
    );
    assert!(store.is_denied("2001:db8:1::1".parse().unwrap()));
    assert!(!store.is_denied("198.51.100.8".parse().unwrap()));
    assert!(matches!(
        store.add(t("192.0.2.9"), None, "manual", "t", 1),
        Err(DenyError::Allowed(_))
    ));
    assert!(store.remove(&t("198.51.100.7")).unwrap());
    assert!(!store.is_denied("198.51.100.7".parse().unwrap()));
}

#[test]
fn protected_addresses_need_force_and_broad_prefixes_never_pass() {
    let mut p = Protected::new();
    p.add("upstream api", ["10.20.0.5".parse().unwrap()]);
    let store =
        DenyStore::new(None, None, vec!["192.0.2.0/24".parse().unwrap()]).with_protected(&p);
    // Automatic bans never cover one.
    let auto = store.add(
        t("10.20.0.5"),
        Some(Duration::from_secs(60)),
        "rate",
        "r",
        1,
    );
    assert!(matches!(auto, Err(DenyError::Protected { .. })), "{auto:?}");
    // A manual deny names it, unless forced.
    for s in ["10.20.0.5", "10.20.0.0/16", "10.0.0.0/8", "192.0.0.0/16"] {
        let e = store.add_manual(t(s), None, "m", false).unwrap_err();
        assert!(matches!(e, DenyError::Protected { .. }), "{s}: {e}");
    }
    let msg = store
        .add_manual(t("10.20.0.0/16"), None, "m", false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("10.20.0.5 (upstream api)") && msg.contains("--force"),
        "{msg}"
    );
    store
        .add_manual(t("10.20.0.0/16"), None, "m", true)
        .unwrap();
    assert!(store.is_denied("10.20.0.5".parse().unwrap()));
    // Too broad: refused even with force, in every spelling an attacker might try.
    for s in [
        "0.0.0.0/0",
        "::/0",
        "::/64",
        "::/80",
        "0.0.0.0/7",
        "2000::/15",
        "8000::/1",
    ] {
        for force in [false, true] {
            let e = store.add_manual(t(s), None, "m", force).unwrap_err();
            assert!(
                matches!(e, DenyError::TooBroad(_)),
                "{s} force={force}: {e}"
            );
        }
    }
    assert!(!store.is_denied("203.0.113.1".parse().unwrap()));
    // Inside the allow list: useless, refused.
    assert!(matches!(
        store.add_manual(t("192.0.2.128/25"), None, "m", true),
        Err(DenyError::Allowed(_))
    ));
}

#[test]
fn ttls_that_would_overflow_are_refused_naming_the_largest() {
    let store = DenyStore::new(None, None, Vec::new());
    let e = store
        .add_manual(
            t("203.0.113.9"),
            Some(MAX_TTL + Duration::from_secs(1)),
            "m",
            false,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains(&MAX_TTL.as_secs().to_string()),
        "{e}"
    );
    let huge = store.add_manual(t("203.0.113.9"), Some(Duration::MAX), "m", false);
    assert!(matches!(huge, Err(DenyError::TtlTooLong(_))));
    store
        .add_manual(t("203.0.113.9"), Some(MAX_TTL), "m", false)
        .unwrap();
    assert!(store.is_denied("203.0.113.9".parse().unwrap()));
}

#[test]
fn a_reload_replaces_the_protected_addresses_and_the_allow_list() {
    let mut old = Protected::new();
    old.add("upstream app", ["10.20.0.5".parse().unwrap()]);
    let store =
        DenyStore::new(None, None, vec!["192.0.2.0/24".parse().unwrap()]).with_protected(&old);
    let mut new = Protected::new();
    new.add("upstream app", ["10.20.0.6".parse().unwrap()]);
    store.replace_protected(&["198.51.100.0/24".parse().unwrap()], &new);
    let ttl = Some(Duration::from_secs(60));
    // The new upstream server and the new allow list are protected...
    let e = store.add(t("10.20.0.6"), ttl, "rate", "r", 1).unwrap_err();
    assert!(matches!(e, DenyError::Protected { .. }), "{e}");
    assert!(store.add(t("198.51.100.7"), ttl, "rate", "r", 1).is_err());
    // ...and the old ones no longer are.
    store.add(t("10.20.0.5"), ttl, "rate", "r", 1).unwrap();
    store.add(t("192.0.2.7"), ttl, "rate", "r", 1).unwrap();
    assert!(store.is_denied("10.20.0.5".parse().unwrap()));
}
