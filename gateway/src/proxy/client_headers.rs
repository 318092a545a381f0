//! Client-sent headers that never reach the upstream because the upstream would trust them:
//! copies of the claim headers the gateway sets, method- and URL-override headers on routes
//! with token checks, and look-alikes of the forwarding headers.
//!
//! Names are compared the way lenient servers read them: case-insensitively (HeaderName is
//! lower case already) and with `_` the same as `-`, because servers that map `_` to `-`
//! (CGI-style environments, Puma before CVE-2024-45614's fix) turn `X_Auth_Sub` into the
//! `X-Auth-Sub` we set.

use http::header::{HeaderMap, HeaderName};

/// Headers that make an upstream serve another method or path than the request line's,
/// which the route's scopes were checked for.
const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Forwarding headers [`super::forwarding`] sets, replaces or removes by their exact names;
/// their `_` look-alikes are removed here.
const FORWARDING_HEADERS: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// `a` and `b` are the same name once `_` is read as `-` (both lower case).
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(&x, &y)| {
            let fold = |c: u8| if c == b'_' { b'-' } else { c };
            fold(x) == fold(y)
        })
}

/// Whether a client-sent header named `name` is removed. `claims`: every configured claim
/// header name; `overrides`: the route strips override headers.
fn is_spoofable(name: &HeaderName, claims: &[HeaderName], overrides: bool) -> bool {
    let n = name.as_str().as_bytes();
    claims.iter().any(|c| same_name(n, c.as_str().as_bytes()))
        || (overrides && OVERRIDE_HEADERS.iter().any(|o| same_name(n, o.as_bytes())))
        || (n.contains(&b'_')
            && FORWARDING_HEADERS
                .iter()
                .any(|f| same_name(n, f.as_bytes())))
}

/// Removes the client's headers the upstream must not see (see the module docs). One pass
/// over the names, and no allocation, when there are none, which is the common case.
pub fn remove_spoofable(headers: &mut HeaderMap, claims: &[HeaderName], overrides: bool) {
    if !headers.keys().any(|n| is_spoofable(n, claims, overrides)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n, claims, overrides))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn left_after(names: &[&str], claims: &[&str], overrides: bool) -> Vec<String> {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_static("v"),
            );
        }
        let claims: Vec<HeaderName> = claims
            .iter()
            .map(|c| HeaderName::from_bytes(c.as_bytes()).expect("name"))
            .collect();
        remove_spoofable(&mut h, &claims, overrides);
        let mut left: Vec<String> = h.keys().map(|n| n.as_str().to_owned()).collect();
        left.sort();
        left
    }

    #[test]
    fn claim_header_look_alikes_go_whatever_their_case_or_separator() {
        let left = left_after(
            &[
                "X-Auth-Sub",
                "x_auth_sub",
                "X_Auth_Sub",
                "x-auth_sub",
                "X-AUTH-SCOPE",
                "x-auth-subx",
                "x-auth",
                "accept",
            ],
            &["X-Auth-Sub", "X-Auth-Scope"],
            false,
        );
        assert_eq!(left, ["accept", "x-auth", "x-auth-subx"]);
        // A claim header configured with `_` is matched the same way.
        let left = left_after(
            &["x-user-id", "x_user_id", "x-other"],
            &["x_user_id"],
            false,
        );
        assert_eq!(left, ["x-other"]);
    }

    #[test]
    fn override_headers_go_only_where_the_route_strips_them() {
        let names = [
            "X-HTTP-Method-Override",
            "x_http_method_override",
            "X-HTTP-Method",
            "X-Method-Override",
            "X-Original-URL",
            "x_original_url",
            "X-Rewrite-URL",
            "accept",
        ];
        assert_eq!(left_after(&names, &[], true), ["accept"]);
        assert_eq!(left_after(&names, &[], false).len(), 8);
    }

    #[test]
    fn forwarding_look_alikes_go_and_the_real_names_are_left_to_forwarding() {
        let left = left_after(
            &[
                "x_forwarded_for",
                "X_Forwarded_Proto",
                "x_forwarded-host",
                "x_forwarded_port",
                "x_real_ip",
                "x-forwarded-for",
                "x-real-ip",
                "forwarded",
            ],
            &[],
            false,
        );
        assert_eq!(left, ["forwarded", "x-forwarded-for", "x-real-ip"]);
    }

    #[test]
    fn nothing_to_remove_leaves_the_map_alone() {
        let left = left_after(
            &["accept", "x-request-id", "user-agent"],
            &["x-auth-sub"],
            true,
        );
        assert_eq!(left, ["accept", "user-agent", "x-request-id"]);
    }
}
