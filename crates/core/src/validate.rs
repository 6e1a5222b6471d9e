//! Validation of the names and free-form maps users send. Each check returns an error that
//! quotes the value and states the rule, so the user can fix the request without the docs.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Longest DNS name (RFC 1035), and so the longest container, alias or network name.
pub const MAX_NAME_LEN: usize = 253;
/// Longest DNS label: every dot-separated part of a name.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest container id (Docker's are 64 hex digits; CNI runtimes use other shapes).
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Most labels (or options) on one object.
pub const MAX_MAP_ENTRIES: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 255;
pub const MAX_LABEL_VALUE_LEN: usize = 4096;
/// Linux IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// Most aliases on one endpoint.
pub const MAX_ALIASES: usize = 32;

/// A name that must also work in DNS: network, container and alias names, host names.
///
/// Dot-separated parts of 1 to 63 letters, digits, `-` or `_`, each starting with a letter or
/// digit; at most 253 characters. This is Docker's container-name alphabet
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]`) with the length limits DNS imposes.
pub fn dns_name(what: &str, name: &str) -> Result<()> {
    let label_ok = |label: &str| {
        let mut chars = label.chars();
        label.len() <= MAX_LABEL_LEN
            && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('.').all(label_ok) {
        return Ok(());
    }
    Err(Error::invalid(
        what,
        name,
        format_args!(
            "use 1 to {MAX_NAME_LEN} characters: dot-separated parts of letters, digits, '-' or '_', \
             each starting with a letter or digit and at most {MAX_LABEL_LEN} long"
        ),
    ))
}

/// A container id: 1 to 128 letters, digits, `_`, `.` or `-`, starting with a letter or digit.
pub fn container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = id.len() <= MAX_CONTAINER_ID_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "container id",
            id,
            format_args!(
                "use 1 to {MAX_CONTAINER_ID_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':', whitespace or control characters, and
/// not "." or ".." (iproute2's rules).
pub fn ifname(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            name,
            format_args!(
                "an interface name is 1 to {MAX_IFNAME_LEN} printable ASCII characters without '/', ':' or spaces"
            ),
        ))
    }
}

/// A key/value map such as labels: at most 64 entries, keys of 1 to 255 printable characters
/// without '=' or whitespace, values of at most 4096 characters without control characters.
pub fn labels(what: &str, map: &BTreeMap<String, String>) -> Result<()> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(Error::bad_request(format!(
            "too many {what}s: {} given, at most {MAX_MAP_ENTRIES} allowed",
            map.len()
        )));
    }
    for (key, value) in map {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_LEN
            && key.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '=');
        if !key_ok {
            return Err(Error::invalid(
                &format!("{what} key"),
                key,
                format_args!(
                    "a key is 1 to {MAX_LABEL_KEY_LEN} characters without '=', spaces or control characters"
                ),
            )
            .about_field(&format!("{what}s")));
        }
        if value.len() > MAX_LABEL_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                &format!("{what} value for {}", crate::error::quoted(key)),
                value,
                format_args!(
                    "a value is at most {MAX_LABEL_VALUE_LEN} characters without control characters"
                ),
            )
            .about_field(&format!("{what}s")));
        }
    }
    Ok(())
}

/// Aliases: at most 32, each a valid DNS name, no duplicates (case-insensitive).
pub fn aliases(aliases: &[String]) -> Result<()> {
    if aliases.len() > MAX_ALIASES {
        return Err(Error::bad_request(format!(
            "too many aliases: {} given, at most {MAX_ALIASES} allowed",
            aliases.len()
        )));
    }
    for (i, alias) in aliases.iter().enumerate() {
        dns_name("alias", alias)?;
        if aliases[..i].iter().any(|a| a.eq_ignore_ascii_case(alias)) {
            return Err(Error::invalid("alias", alias, "each alias may be given once"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["web", "web-1", "a", "my_app.blue", "0abc", &"x".repeat(63)] {
            dns_name("name", ok).unwrap();
        }
        for bad in ["", "-web", "web!", "a..b", ".a", "a.", "wéb", "a b", &"x".repeat(64), &"a.".repeat(127)]
        {
            let err = dns_name("container name", bad).unwrap_err();
            assert!(err.message().starts_with("invalid container name"), "{err}");
        }
    }

    #[test]
    fn container_ids() {
        container_id(&"f".repeat(64)).unwrap();
        container_id("pod-1.c_2").unwrap();
        for bad in ["", "-x", "a/b", &"a".repeat(129)] {
            assert!(container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        ifname("bridge name", "br-blue").unwrap();
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen_chars_xx"] {
            assert!(ifname("bridge name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_maps() {
        let mut m = BTreeMap::new();
        m.insert("com.example.team".to_string(), "net ops".to_string());
        labels("label", &m).unwrap();
        m.insert("a=b".into(), String::new());
        let err = labels("label", &m).unwrap_err();
        assert!(err.message().contains("\"a=b\""), "{err}");
        let too_many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels("label", &too_many).unwrap_err().message().contains("at most 64"));
        let mut ctl = BTreeMap::new();
        ctl.insert("k".to_string(), "line\nbreak".to_string());
        assert!(labels("label", &ctl).is_err());
    }

    #[test]
    fn alias_lists() {
        aliases(&["db".into(), "primary".into()]).unwrap();
        assert!(aliases(&["db".into(), "DB".into()]).is_err());
        assert!(aliases(&["bad alias".into()]).is_err());
    }
}
