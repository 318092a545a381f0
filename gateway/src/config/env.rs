//! `${VAR}` and `${VAR:-default}` in configuration values, expanded from the environment
//! before parsing, line by line so errors keep their line numbers. `$${` writes a literal
//! `${`. Comments are left alone.

/// A reference that cannot be expanded: 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub line: usize,
    pub message: String,
}

/// Expands every reference in `text` using `lookup`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, &lookup, &mut out).map_err(|message| EnvError {
            line: i + 1,
            message,
        })?;
    }
    Ok(out)
}

fn expand_line(
    line: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), String> {
    let mut rest = line;
    let mut quote: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if quote.is_none() && c == '#' {
            out.push_str(rest);
            return Ok(());
        }
        if rest.starts_with("$${") {
            out.push_str("${");
            rest = &rest[3..];
            continue;
        }
        if rest.starts_with("${") {
            let end = rest
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$${` for a literal)".to_string())?;
            let inner = &rest[2..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            let value = match lookup(name).filter(|v| !v.is_empty() || default.is_none()) {
                Some(v) => v,
                None => match default {
                    Some(d) => d.to_string(),
                    None => return Err(format!("environment variable `{name}` is not set")),
                },
            };
            if value.contains('\n') || value.contains('"') || value.contains('\\') {
                return Err(format!(
                    "environment variable `{name}` contains a newline, quote or backslash"
                ));
            }
            out.push_str(&value);
            rest = &rest[end + 1..];
            continue;
        }
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "WORK" => Some("/srv/w".into()),
            "EMPTY" => Some(String::new()),
            "BAD" => Some("a\"b".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_values_and_defaults() {
        let text = "a = \"${WORK}/keys\"\nb = \"${NOPE:-x}\" # ${NOPE}\nc = \"${EMPTY:-d}\"\nd = \"$${WORK}\"\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "a = \"/srv/w/keys\"\nb = \"x\" # ${NOPE}\nc = \"d\"\nd = \"${WORK}\"\n"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = expand("a = 1\nb = \"${NOPE}\"\n", env).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("`NOPE` is not set"));
        assert!(expand("a = \"${WORK\"\n", env).is_err());
        assert!(expand("a = \"${BAD}\"\n", env).is_err());
        assert!(expand("a = \"${A-B}\"\n", env).is_err());
    }
}
