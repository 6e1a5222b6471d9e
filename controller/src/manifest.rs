//! The bootstrap manifest: the members of a new cluster and its address settings, in TOML.
//!
//! ```toml
//! cluster_id = "prod-eu-1"
//! members = [
//!   { id = 1, address = "10.1.0.1:7001" },
//!   { id = 2, address = "10.1.0.2:7001" },
//!   { id = 3, address = "10.1.0.3:7001" },
//! ]
//! # Everything below is optional; the defaults are shown.
//! ipv4_pools = [{ base = "10.0.0.0/8", size = 24 }]
//! ipv6_pools = [{ base = "fd77:6566:7400::/40", size = 64 }]
//! vni_min = 4096
//! vni_max = 16777215
//! vxlan_port = 4789
//! tunnel_pool = "10.255.0.0/16"
//! encrypt_by_default = false
//!
//! # Networks the cluster starts with: created once, when the cluster is bootstrapped.
//! # Starting a member again with the manifest changes nothing (networks removed since
//! # stay removed).
//! [[networks]]
//! name = "frontend"
//! subnet = "10.20.0.0/24"          # optional: carved from the pools otherwise
//! ipv6 = false
//! internal = false
//! options = { encrypted = "true" }  # docker network create's -o
//! labels = { team = "web" }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use weft_api::{convert, pb};
use weft_core::ClusterConfig;

use crate::raft_types::NodeId;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    cluster_id: String,
    members: Vec<MemberFile>,
    ipv4_pools: Option<Vec<PoolFile>>,
    ipv6_pools: Option<Vec<PoolFile>>,
    vni_min: Option<u32>,
    vni_max: Option<u32>,
    vxlan_port: Option<u32>,
    tunnel_pool: Option<String>,
    encrypt_by_default: Option<bool>,
    #[serde(default)]
    networks: Vec<NetworkFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    name: String,
    subnet: Option<String>,
    #[serde(default)]
    ipv6: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    id: NodeId,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    base: String,
    size: u32,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// id -> host:port of each member's gRPC listener.
    pub members: BTreeMap<NodeId, String>,
    pub config: ClusterConfig,
    /// Networks the cluster should have, as create requests.
    pub networks: Vec<pb::CreateNetworkRequest>,
}

/// What is wrong with a manifest, naming the field (or, for TOML errors, the line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("cluster_id: give the cluster a name, e.g. cluster_id = \"prod-eu-1\"")]
    NoClusterId,
    #[error("members: a cluster has 1, 3 or 5 members ({0} given); an even count adds no fault tolerance")]
    MemberCount(usize),
    #[error("members: ids start at 1")]
    MemberIdZero,
    #[error("members: member {id} has address {address:?}; expected ip:port, like 10.1.0.1:7001")]
    MemberAddress { id: u64, address: String },
    #[error("members: id {0} appears twice")]
    MemberTwice(u64),
    #[error("{0}")]
    Config(weft_core::Error),
    #[error("networks[{index}] ({name:?}): {source}")]
    Network { index: usize, name: String, source: weft_core::Error },
    #[error("networks[{index}]: the name {name:?} appears twice")]
    NetworkTwice { index: usize, name: String },
}

impl Manifest {
    /// Parses and checks a manifest; errors name the line (TOML errors) or the field at fault.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let file: ManifestFile = toml::from_str(text)?;
        if file.cluster_id.trim().is_empty() {
            return Err(ManifestError::NoClusterId);
        }
        if !matches!(file.members.len(), 1 | 3 | 5) {
            return Err(ManifestError::MemberCount(file.members.len()));
        }
        let mut members = BTreeMap::new();
        for member in &file.members {
            if member.id == 0 {
                return Err(ManifestError::MemberIdZero);
            }
            if member.address.parse::<SocketAddr>().is_err() {
                return Err(ManifestError::MemberAddress { id: member.id, address: member.address.clone() });
            }
            if members.insert(member.id, member.address.clone()).is_some() {
                return Err(ManifestError::MemberTwice(member.id));
            }
        }
        let defaults = convert::cluster_config(&ClusterConfig::default());
        let pools = |given: Option<Vec<PoolFile>>, default: Vec<pb::AddressPool>| {
            given.map_or(default, |pools| {
                pools.into_iter().map(|p| pb::AddressPool { base: p.base, size: p.size }).collect()
            })
        };
        let wire = pb::ClusterConfig {
            cluster_id: file.cluster_id,
            ipv4_pools: pools(file.ipv4_pools, defaults.ipv4_pools),
            ipv6_pools: pools(file.ipv6_pools, defaults.ipv6_pools),
            vni_min: file.vni_min.unwrap_or(defaults.vni_min),
            vni_max: file.vni_max.unwrap_or(defaults.vni_max),
            vxlan_port: file.vxlan_port.unwrap_or(defaults.vxlan_port),
            tunnel_pool: file.tunnel_pool.unwrap_or(defaults.tunnel_pool),
            encrypt_by_default: file.encrypt_by_default.unwrap_or(defaults.encrypt_by_default),
        };
        let config = convert::cluster_config_from_pb(&wire).map_err(ManifestError::Config)?;
        let mut networks = Vec::new();
        for (i, n) in file.networks.into_iter().enumerate() {
            let request = pb::CreateNetworkRequest {
                name: n.name,
                ipam_config: n
                    .subnet
                    .map(|subnet| vec![pb::IpamConfig { subnet, ..Default::default() }])
                    .unwrap_or_default(),
                enable_ipv6: n.ipv6,
                internal: n.internal,
                options: n.options,
                labels: n.labels,
                ..Default::default()
            };
            // Checked here, so a bad entry stops the start with its place named.
            convert::network_request(&request).map_err(|source| ManifestError::Network {
                index: i,
                name: request.name.clone(),
                source,
            })?;
            if networks
                .iter()
                .any(|other: &pb::CreateNetworkRequest| other.name.eq_ignore_ascii_case(&request.name))
            {
                return Err(ManifestError::NetworkTwice { index: i, name: request.name });
            }
            networks.push(request);
        }
        Ok(Manifest { members, config, networks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
cluster_id = "test"
members = [
  { id = 1, address = "127.0.0.1:7001" },
  { id = 2, address = "127.0.0.1:7002" },
  { id = 3, address = "127.0.0.1:7003" },
]
vni_min = 5000
"#;

    #[test]
    fn a_three_member_manifest_parses_with_defaults() {
        let m = Manifest::parse(THREE).unwrap();
        assert_eq!(m.members.len(), 3);
        assert_eq!(m.config.cluster_id, "test");
        assert_eq!(m.config.vni_min, 5000);
        assert_eq!(m.config.vxlan_port, 4789);
    }

    #[test]
    fn the_shipped_example_manifest_parses() {
        let text = include_str!("../../deploy/container/cluster.example.toml");
        let m = Manifest::parse(text).unwrap();
        assert_eq!((m.members.len(), m.networks.len()), (3, 1));
    }

    #[test]
    fn initial_networks_parse_and_bad_ones_are_named() {
        let with = format!(
            "{THREE}\n[[networks]]\nname = \"front\"\nsubnet = \"10.20.0.0/24\"\noptions = {{ encrypted = \"true\" }}\n"
        );
        let m = Manifest::parse(&with).unwrap();
        assert_eq!(m.networks.len(), 1);
        assert_eq!(m.networks[0].ipam_config[0].subnet, "10.20.0.0/24");
        let bad = format!(
            "{THREE}\n[[networks]]\nname = \"ok\"\n[[networks]]\nname = \"bad\"\nsubnet = \"10.20.0.1/24\"\n"
        );
        let err = Manifest::parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with("networks[1] (\"bad\")") && err.contains("10.20.0.1/24"), "{err}");
        let twice = format!("{THREE}\n[[networks]]\nname = \"a\"\n[[networks]]\nname = \"A\"\n");
        assert!(Manifest::parse(&twice).unwrap_err().to_string().contains("appears twice"));
        let unknown = format!("{THREE}\n[[networks]]\nname = \"a\"\ncolour = \"red\"\n");
        assert!(Manifest::parse(&unknown).unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn bad_manifests_name_what_is_wrong() {
        let cases = [
            (THREE.replace("vni_min", "vni_minimum"), "unknown field `vni_minimum`"),
            (
                THREE.replace("7003\" },", "7003\" },\n  { id = 4, address = \"127.0.0.1:7004\" },"),
                "1, 3 or 5",
            ),
            (THREE.replace("127.0.0.1:7002", "nowhere"), "member 2 has address \"nowhere\""),
            (THREE.replace("id = 3", "id = 2"), "id 2 appears twice"),
            (THREE.replace("vni_min = 5000", "vni_min = 0"), "VNI range"),
            (THREE.replace("cluster_id = \"test\"", "cluster_id = \" \""), "cluster_id"),
            (format!("{THREE}\ntunnel_pool = \"10.0.0.1/16\""), "did you mean 10.0.0.0/16"),
            (format!("{THREE}\ntunnel_pool = \"169.254.0.0/16\""), "link-local"),
            (format!("{THREE}\nipv4_pools = [{{ base = \"224.0.0.0/4\", size = 24 }}]"), "multicast"),
            (format!("{THREE}\nipv6_pools = [{{ base = \"fe80::/10\", size = 64 }}]"), "link-local"),
        ];
        for (text, expect) in cases {
            let err = Manifest::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expect), "{expect}: {err}");
        }
        // TOML syntax errors carry the line.
        let err = Manifest::parse("cluster_id = \n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
