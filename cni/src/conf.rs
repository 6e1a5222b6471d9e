//! What a runtime hands weft-cni: the network configuration (stdin) and the `CNI_*`
//! environment, and the attach request they make.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use weft_api::agent;

use crate::error::CniError;

/// The network configuration, as the runtime passes it on stdin (one plugin of a conflist,
/// with `runtimeConfig` and, when chained, `prevResult`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The runtime's name for the network (podman: the conflist's name).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The weft network: its name, id or unique id prefix. Defaults to `name`.
    pub network: String,
    /// weft-node's attach API socket; defaults to /run/weft/agent.sock.
    pub socket: Option<PathBuf>,
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<serde_json::Value>,
    /// GC (CNI 1.1): the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<ValidAttachment>,
}

/// The capabilities weft-cni declares, as the runtime fills them in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    #[serde(rename = "portMappings")]
    pub port_mappings: Vec<PortMapping>,
    /// Network name → the container's aliases on it.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Static addresses, with or without a prefix length.
    pub ips: Vec<String>,
    pub mac: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// "tcp" (the default), "udp" or "sctp".
    pub protocol: String,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Ok(NetConf::default());
        }
        serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                CniError::DECODING_FAILURE,
                format!("the network configuration is not valid JSON: {e}"),
            )
        })
    }

    /// The weft network this configuration attaches to.
    pub fn weft_network(&self) -> &str {
        if self.network.is_empty() { &self.name } else { &self.network }
    }

    /// Refuses a version weft-cni does not speak.
    pub fn check_version(&self) -> Result<(), CniError> {
        if crate::SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Ok(());
        }
        Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported: weft-cni speaks {}",
                self.cni_version,
                crate::SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| PathBuf::from(crate::DEFAULT_SOCKET))
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
}

/// `CNI_ARGS` keys weft-cni reads; others are refused unless `IgnoreUnknown=1`.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];

impl Invocation {
    /// From the environment `var` reads.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let get = |name: &str| var(name).unwrap_or_default();
        let mut args = BTreeMap::new();
        for pair in get("CNI_ARGS").split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_ARGS: {pair:?} is not KEY=VALUE"))
            })?;
            args.insert(key.to_string(), value.to_string());
        }
        let ignore_unknown =
            args.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if let Some(unknown) = args.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str()))
            && !ignore_unknown
        {
            return Err(CniError::new(
                CniError::INVALID_ENVIRONMENT,
                format!(
                    "CNI_ARGS: {unknown} is not an argument weft-cni knows (add IgnoreUnknown=1 to pass it anyway)"
                ),
            ));
        }
        Ok(Invocation {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args,
        })
    }

    /// Refuses an invocation without the variables `command` needs.
    pub fn require(&self, names: &[&str]) -> Result<(), CniError> {
        for name in names {
            let value = match *name {
                "CNI_CONTAINERID" => &self.container_id,
                "CNI_NETNS" => &self.netns,
                "CNI_IFNAME" => &self.ifname,
                _ => continue,
            };
            if value.is_empty() {
                return Err(CniError::new(
                    CniError::INVALID_ENVIRONMENT,
                    format!("{name} is not set: {} needs it", self.command),
                ));
            }
        }
        Ok(())
    }

    /// The container's name in weft's DNS: the runtime's name for it (`K8S_POD_NAME`, which
    /// podman sets to the container's name), else the first 12 characters of its id, as
    /// Docker shows ids. A name DNS cannot carry (podman allows `.`) falls back the same way.
    pub fn container_name(&self) -> String {
        let short_id: String = self.container_id.chars().take(12).collect();
        match self.args.get("K8S_POD_NAME") {
            Some(name) if weft_core::validate::dns_name("name", name).is_ok() && !name.contains('.') => {
                name.clone()
            }
            _ => short_id,
        }
    }
}

/// The attach request of an ADD.
pub fn attach_request(conf: &NetConf, call: &Invocation) -> Result<agent::AttachRequest, CniError> {
    let invalid = |msg: String| CniError::new(CniError::INVALID_NETWORK_CONFIG, msg);
    let name = call.container_name();
    let mut aliases: Vec<String> = conf
        .runtime_config
        .aliases
        .get(&conf.name)
        .into_iter()
        .flatten()
        .filter(|a| **a != name && weft_core::validate::dns_name("alias", a).is_ok() && !a.contains('.'))
        .cloned()
        .collect();
    aliases.sort();
    aliases.dedup();
    let mut ipv4 = String::new();
    let mut ipv6 = String::new();
    let statics = conf.runtime_config.ips.iter().chain(call.args.get("IP"));
    for text in statics.flat_map(|t| t.split(',')) {
        let ip = text.split('/').next().unwrap_or_default();
        let slot = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => &mut ipv4,
            Ok(std::net::IpAddr::V6(_)) => &mut ipv6,
            Err(_) => return Err(invalid(format!("static address {text:?} is not an IP address"))),
        };
        if !slot.is_empty() && slot != ip {
            return Err(invalid(format!("two static addresses of one family: {slot} and {ip}")));
        }
        *slot = ip.to_string();
    }
    let mac = match (&conf.runtime_config.mac, call.args.get("MAC")) {
        (mac, _) if !mac.is_empty() => mac.clone(),
        (_, Some(mac)) => mac.clone(),
        _ => String::new(),
    };
    let publish = conf
        .runtime_config
        .port_mappings
        .iter()
        .map(|p| {
            if p.container_port == 0 {
                return Err(invalid(format!("port mapping {p:?}: containerPort must be 1-65535")));
            }
            Ok(agent::PortRequest {
                protocol: if p.protocol.is_empty() { "tcp".into() } else { p.protocol.to_ascii_lowercase() },
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.into(),
                host_port_end: 0,
                container_port: p.container_port.into(),
                container_port_end: 0,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(agent::AttachRequest {
        netns: call.netns.clone(),
        network: conf.weft_network().to_string(),
        container_id: call.container_id.clone(),
        container_name: name,
        aliases,
        ipv4_address: ipv4,
        ipv6_address: ipv6,
        mac_address: mac,
        publish,
        interface: call.ifname.clone(),
        front_end: "cni".into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    /// What podman 4.3 passes (RUNTIMES.md), with a static IP and MAC.
    fn podman_add() -> (NetConf, Invocation) {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"app","type":"weft","network":"app",
                 "capabilities":{"portMappings":true,"aliases":true},
                 "runtimeConfig":{"aliases":{"app":["api","9f3e5a6b7c8d"]},
                   "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                                   {"hostPort":9090,"containerPort":90,"protocol":"udp","hostIP":"127.0.0.1"}]}}"#,
        )
        .unwrap();
        let call = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "9f3e5a6b7c8d00112233445566778899aabbccddeeff00112233445566778899"),
            ("CNI_NETNS", "/run/netns/netns-1b2c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.88.0.7;MAC=02:42:0a:58:00:07"),
        ]))
        .unwrap();
        (conf, call)
    }

    #[test]
    fn podmans_add_becomes_an_attach() {
        let (conf, call) = podman_add();
        let request = attach_request(&conf, &call).unwrap();
        assert_eq!(request.network, "app");
        assert_eq!((request.container_name.as_str(), request.interface.as_str()), ("web", "eth0"));
        assert_eq!(request.aliases, vec!["9f3e5a6b7c8d".to_string(), "api".to_string()]);
        assert_eq!(
            (request.ipv4_address.as_str(), request.mac_address.as_str()),
            ("10.88.0.7", "02:42:0a:58:00:07")
        );
        assert_eq!(request.publish.len(), 2);
        assert_eq!(
            (
                request.publish[1].protocol.as_str(),
                request.publish[1].host_ip.as_str(),
                request.publish[1].host_port
            ),
            ("udp", "127.0.0.1", 9090)
        );
        assert_eq!(request.front_end, "cni");
    }

    #[test]
    fn names_fall_back_to_the_short_id_and_the_network_to_the_conf_name() {
        let (mut conf, mut call) = podman_add();
        conf.network.clear();
        assert_eq!(conf.weft_network(), "app");
        call.args.insert("K8S_POD_NAME".into(), "my.container".into());
        assert_eq!(call.container_name(), "9f3e5a6b7c8d");
        call.args.remove("K8S_POD_NAME");
        assert_eq!(call.container_name(), "9f3e5a6b7c8d");
    }

    #[test]
    fn bad_input_is_refused_with_the_specs_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, CniError::DECODING_FAILURE);
        let old = NetConf { cni_version: "0.2.0".into(), ..NetConf::default() };
        let refused = old.check_version().unwrap_err();
        assert_eq!(refused.code, CniError::INCOMPATIBLE_VERSION);
        assert!(refused.msg.contains("0.4.0, 1.0.0"), "{refused}");
        let unknown = Invocation::from_env(env(&[("CNI_ARGS", "FOO=1")])).unwrap_err();
        assert_eq!(unknown.code, CniError::INVALID_ENVIRONMENT);
        let missing = Invocation::from_env(env(&[("CNI_COMMAND", "ADD")])).unwrap();
        assert_eq!(missing.require(&["CNI_CONTAINERID"]).unwrap_err().code, CniError::INVALID_ENVIRONMENT);
        let (mut conf, call) = podman_add();
        conf.runtime_config.ips = vec!["10.88.0.9/16".into()];
        assert_eq!(attach_request(&conf, &call).unwrap_err().code, CniError::INVALID_NETWORK_CONFIG);
        conf.runtime_config.ips = vec!["nope".into()];
        assert_eq!(attach_request(&conf, &call).unwrap_err().code, CniError::INVALID_NETWORK_CONFIG);
    }
}
