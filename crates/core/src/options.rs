//! Driver options (`-o key=value`): the keys Docker users know from the bridge driver keep their
//! meaning, plus the overlay's `encrypted`. Unknown keys are refused rather than ignored, so a
//! typo never silently turns a feature off.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate;

pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_HOST_BINDING_IPV4: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
pub const OPT_IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
pub const OPT_ENCRYPTED: &str = "encrypted";

/// Every option key weft understands.
pub const KNOWN_OPTIONS: [&str; 7] = [
    OPT_BRIDGE_NAME,
    OPT_MASQUERADE,
    OPT_ICC,
    OPT_HOST_BINDING_IPV4,
    OPT_MTU,
    OPT_IFACE_PREFIX,
    OPT_ENCRYPTED,
];

/// Derived bridge names start with this; user-chosen bridge names may not, so the two never
/// collide on a host.
pub const DERIVED_BRIDGE_PREFIX: &str = "weft";

/// Smallest MTU an IPv4 interface may have (RFC 791) and the IPv6 minimum (RFC 8200).
pub const MIN_MTU_V4: u32 = 68;
pub const MIN_MTU_V6: u32 = 1280;
pub const MAX_MTU: u32 = 65535;
/// Longest interface prefix: leaves room for the index digits within 15 characters.
pub const MAX_IFACE_PREFIX_LEN: usize = 12;

/// The typed meaning of a network's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Bridge interface name on every host; derived from the VNI when unset.
    pub bridge_name: Option<String>,
    /// Egress NAT for the subnet (default on; `internal` networks never masquerade).
    pub masquerade: bool,
    /// Traffic between containers of this network (default on).
    pub icc: bool,
    /// Default host address for published ports.
    pub host_binding_ipv4: Option<Ipv4Addr>,
    /// Container MTU; `None` computes it per host from the underlay.
    pub mtu: Option<u32>,
    /// Container interface names: prefix + index (default `eth`).
    pub iface_prefix: String,
    /// Host-to-host traffic inside WireGuard.
    pub encrypted: bool,
}

impl NetworkSettings {
    /// Parses options, with `encrypt_by_default` as the value of an absent `encrypted`.
    pub fn parse(
        options: &BTreeMap<String, String>,
        encrypt_by_default: bool,
        ipv6: bool,
    ) -> Result<NetworkSettings> {
        if options.len() > validate::MAX_MAP_ENTRIES {
            return Err(Error::bad_request(format!(
                "too many options: {} given, at most {} allowed",
                options.len(),
                validate::MAX_MAP_ENTRIES
            )));
        }
        let mut settings = NetworkSettings {
            bridge_name: None,
            masquerade: true,
            icc: true,
            host_binding_ipv4: None,
            mtu: None,
            iface_prefix: "eth".to_string(),
            encrypted: encrypt_by_default,
        };
        for (key, value) in options {
            match key.as_str() {
                OPT_BRIDGE_NAME => {
                    validate::ifname(&format!("option {key}"), value)?;
                    if value.starts_with(DERIVED_BRIDGE_PREFIX) {
                        return Err(Error::invalid(
                            &format!("option {key}"),
                            value,
                            format_args!(
                                "names starting with {DERIVED_BRIDGE_PREFIX:?} are reserved for weft's own bridges"
                            ),
                        ));
                    }
                    settings.bridge_name = Some(value.clone());
                }
                OPT_MASQUERADE => settings.masquerade = parse_bool(key, value, false)?,
                OPT_ICC => settings.icc = parse_bool(key, value, false)?,
                OPT_ENCRYPTED => settings.encrypted = parse_bool(key, value, true)?,
                OPT_HOST_BINDING_IPV4 => {
                    settings.host_binding_ipv4 = Some(value.parse().map_err(|_| {
                        Error::invalid(&format!("option {key}"), value, "expected an IPv4 address")
                    })?)
                }
                OPT_MTU => {
                    let min = if ipv6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
                    let mtu = value.parse::<u32>().ok().filter(|m| (min..=MAX_MTU).contains(m));
                    settings.mtu = Some(mtu.ok_or_else(|| {
                        Error::invalid(
                            &format!("option {key}"),
                            value,
                            format_args!(
                                "an MTU is a number from {min} to {MAX_MTU}{}",
                                if ipv6 { " (IPv6 needs at least 1280)" } else { "" }
                            ),
                        )
                    })?);
                }
                OPT_IFACE_PREFIX => {
                    let ok = !value.is_empty()
                        && value.len() <= MAX_IFACE_PREFIX_LEN
                        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !ok {
                        return Err(Error::invalid(
                            &format!("option {key}"),
                            value,
                            format_args!(
                                "an interface prefix is 1 to {MAX_IFACE_PREFIX_LEN} letters, digits, '_' or '-'"
                            ),
                        ));
                    }
                    settings.iface_prefix = value.clone();
                }
                _ => {
                    return Err(Error::bad_request(format!(
                        "unknown network option {key:?}: weft understands {}",
                        KNOWN_OPTIONS.join(", ")
                    )));
                }
            }
        }
        Ok(settings)
    }
}

/// Go's strconv.ParseBool spellings, as Docker accepts them; `-o encrypted` with no value means
/// true, as with Docker's overlay driver.
fn parse_bool(key: &str, value: &str, empty_is_true: bool) -> Result<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "" if empty_is_true => Ok(true),
        _ => Err(Error::invalid(&format!("option {key}"), value, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_docker() {
        let s = NetworkSettings::parse(&BTreeMap::new(), false, false).unwrap();
        assert!(s.masquerade && s.icc && !s.encrypted);
        assert_eq!(s.iface_prefix, "eth");
        assert_eq!(s.mtu, None);
        assert!(NetworkSettings::parse(&BTreeMap::new(), true, false).unwrap().encrypted);
    }

    #[test]
    fn docker_option_names_keep_their_meaning() {
        let s = NetworkSettings::parse(
            &opts(&[
                (OPT_BRIDGE_NAME, "br-blue"),
                (OPT_MASQUERADE, "false"),
                (OPT_ICC, "0"),
                (OPT_HOST_BINDING_IPV4, "192.0.2.1"),
                (OPT_MTU, "1400"),
                (OPT_IFACE_PREFIX, "net"),
                (OPT_ENCRYPTED, ""),
            ]),
            false,
            false,
        )
        .unwrap();
        assert_eq!(s.bridge_name.as_deref(), Some("br-blue"));
        assert!(!s.masquerade && !s.icc && s.encrypted);
        assert_eq!(s.host_binding_ipv4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.iface_prefix, "net");
    }

    #[test]
    fn bad_options_name_the_key_and_the_rule() {
        let cases: &[(&str, &str, &str)] = &[
            ("com.docker.network.bridge.nmae", "x", "weft understands"),
            (OPT_MTU, "40", "from 68 to 65535"),
            (OPT_MTU, "big", "from 68"),
            (OPT_ICC, "yes", "true or false"),
            (OPT_MASQUERADE, "", "true or false"),
            (OPT_BRIDGE_NAME, "a-very-long-bridge-name", "1 to 15"),
            (OPT_BRIDGE_NAME, "weft7", "reserved"),
            (OPT_HOST_BINDING_IPV4, "::1", "IPv4"),
            (OPT_IFACE_PREFIX, "e/th", "interface prefix"),
        ];
        for (key, value, expect) in cases {
            let err = NetworkSettings::parse(&opts(&[(key, value)]), false, false).unwrap_err();
            assert!(err.message().contains(expect), "{key}={value}: {err}");
            assert!(err.message().contains(key), "{key}={value}: {err}");
        }
        let err = NetworkSettings::parse(&opts(&[(OPT_MTU, "1200")]), false, true).unwrap_err();
        assert!(err.message().contains("IPv6 needs at least 1280"), "{err}");
    }
}
