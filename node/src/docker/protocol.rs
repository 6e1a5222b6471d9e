//! The messages of Docker's plugin protocols weft speaks: the remote network driver and the
//! remote IPAM driver (libnetwork, HTTP POST with JSON bodies on a unix socket). Field names
//! are Docker's; every field a dockerd may leave out has a default. What dockerd 20.10 really
//! sends is recorded in `../shared/RUNTIMES.md`; the tests below parse those bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_core::ports::{PortProtocol, PortSpec, PublishedPort};

/// `Plugin.Activate`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Manifest {
    pub implements: Vec<&'static str>,
}

/// `NetworkDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DriverCapabilities {
    /// "local": each dockerd keeps its own network object (global scope needs swarm).
    pub scope: &'static str,
    /// "global": containers on different hosts reach each other.
    pub connectivity_scope: &'static str,
}

/// `IpamDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    /// Docker then sends the interface's MAC with every address request.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    pub address_space: String,
    /// The subnet asked for (`--subnet`), or empty for one of weft's choosing.
    pub pool: String,
    /// `--ip-range`.
    pub sub_pool: String,
    /// `--ipam-opt`.
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PoolAnswer {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// The gateway's address request carries this in `RequestAddressType`.
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// Where the interface's MAC travels in an address request (with `RequiresMACAddress`).
pub const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// `--ip`, or empty for the next free address.
    pub address: String,
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, String>,
}

impl RequestAddress {
    pub fn is_gateway(&self) -> bool {
        self.options.get("RequestAddressType").is_some_and(|t| t == GATEWAY_REQUEST)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressAnswer {
    /// With its prefix length: "10.1.0.5/24".
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    pub address_space: String,
    pub pool: String,
    /// With its prefix length.
    pub gateway: String,
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` holds the `-o` map; booleans sit beside it.
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetwork {
    /// The `-o key=value` options.
    pub fn driver_options(&self) -> BTreeMap<String, String> {
        self.options
            .get("com.docker.network.generic")
            .and_then(serde_json::Value::as_object)
            .map(|generic| {
                generic
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn internal(&self) -> bool {
        self.options.get("com.docker.network.internal").and_then(serde_json::Value::as_bool).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Interface {
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<Interface>,
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// Docker filled the interface in, so the answer must leave it empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointAnswer {
    pub interface: Option<Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The container's network namespace, e.g. `/var/run/docker/netns/5d3c1a7e9f02`.
    pub sandbox_key: String,
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceName {
    /// The interface in the host namespace that Docker moves into the container.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// Docker names it this plus an index: eth0, eth1, ...
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinAnswer {
    pub interface_name: InterfaceName,
    /// Given, so Docker adds no docker_gwbridge and leaves published ports to weft.
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
}

/// A route Docker adds in the container (`JoinResponse.StaticRoutes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    /// "169.254.53.53/32".
    pub destination: String,
    /// 0: through `next_hop`; 1: on the link.
    pub route_type: u8,
    pub next_hop: String,
}

/// One entry of `com.docker.network.portmap` (`-p`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// IANA protocol number: 6 TCP, 17 UDP, 132 SCTP.
    pub proto: u8,
    #[serde(rename = "IP")]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// 0: any free port.
    pub host_port: u16,
    pub host_port_end: u16,
}

/// `ProgramExternalConnectivity`: the published ports arrive here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExternalConnectivity {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(deserialize_with = "null_is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

impl ExternalConnectivity {
    pub fn port_bindings(&self) -> Result<Vec<PortBinding>, serde_json::Error> {
        match self.options.get("com.docker.network.portmap") {
            Some(value) if !value.is_null() => serde_json::from_value(value.clone()),
            _ => Ok(Vec::new()),
        }
    }
}

impl PortBinding {
    /// What the binding asks weft to publish. `HostPortEnd` past `HostPort` for one container
    /// port means any free port of that range (`-p 8000-8010:80`).
    pub fn spec(&self) -> Result<PortSpec, String> {
        let protocol = match self.proto {
            6 => PortProtocol::Tcp,
            17 => PortProtocol::Udp,
            132 => PortProtocol::Sctp,
            other => return Err(format!("protocol number {other} is not TCP (6), UDP (17) or SCTP (132)")),
        };
        let host_ip = match self.host_ip.as_str() {
            "" => None,
            given => Some(given.parse().map_err(|_| format!("host address {given:?} is not an IP address"))?),
        };
        let host_ports =
            (self.host_port != 0).then(|| self.host_port..=self.host_port_end.max(self.host_port));
        PortSpec::new(protocol, host_ip, host_ports, self.port..=self.port).map_err(|e| e.to_string())
    }

    /// How Docker shows a published port weft holds.
    pub fn of(published: &PublishedPort) -> PortBinding {
        PortBinding {
            proto: match published.protocol {
                PortProtocol::Tcp => 6,
                PortProtocol::Udp => 17,
                PortProtocol::Sctp => 132,
            },
            ip: String::new(),
            port: published.container_port,
            host_ip: published.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_port: published.host_port,
            host_port_end: published.host_port,
        }
    }
}

/// How a network driver's refusal reaches the user: Docker prints
/// `Error response from daemon: remote: <Err>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Refusal {
    pub err: String,
}

/// The IPAM protocol's refusal: the same, under another field name (`Error`, libnetwork's
/// `ipams/remote/api`; an IPAM answer with `Err` reads as "No address returned").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamRefusal {
    pub error: String,
}

/// Docker sends `null` for a map it has nothing in (`"Options":null` in `RequestAddress`
/// when the IPAM asks for no MAC).
fn null_is_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_dockerd_sends_parse() {
        let pool: RequestPool =
            serde_json::from_str(r#"{"AddressSpace":"l","Pool":"","SubPool":"","Options":{},"V6":false}"#)
                .unwrap();
        assert_eq!((pool.address_space.as_str(), pool.pool.as_str(), pool.v6), ("l", "", false));
        let gateway: RequestAddress = serde_json::from_str(
            r#"{"PoolID":"p1","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(gateway.is_gateway());
        // A container's address, when the IPAM asks for no MAC: Docker sends no options at all.
        let address: RequestAddress =
            serde_json::from_str(r#"{"PoolID":"p1","Address":"","Options":null}"#).unwrap();
        assert!(!address.is_gateway() && address.options.is_empty());
        let network: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"caa0","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"encrypted":"true"},"com.docker.network.internal":true},"IPv4Data":[{"AddressSpace":"l","Gateway":"10.99.0.1/24","Pool":"10.99.0.0/24"}],"IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(network.ipv4_data[0].gateway, "10.99.0.1/24");
        assert_eq!(network.driver_options().get("encrypted").map(String::as_str), Some("true"));
        assert!(network.internal());
        let join: Join = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/var/run/docker/netns/5d3c","Options":{}}"#,
        )
        .unwrap();
        assert_eq!(join.sandbox_key, "/var/run/docker/netns/5d3c");
        let ports: ExternalConnectivity = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":17,"IP":"","Port":80,"HostIP":"127.0.0.1","HostPort":9000,"HostPortEnd":9000}]}}"#,
        )
        .unwrap();
        let bindings = ports.port_bindings().unwrap();
        assert_eq!(
            (bindings[0].proto, bindings[0].host_port, bindings[0].host_ip.as_str()),
            (17, 9000, "127.0.0.1")
        );
        let endpoint: CreateEndpoint = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.99.0.2/24","AddressIPv6":"","MacAddress":"02:42:0a:63:00:02"},"Options":{}}"#,
        )
        .unwrap();
        assert_eq!(endpoint.interface.unwrap().address, "10.99.0.2/24");
    }

    #[test]
    fn answers_have_dockers_field_names() {
        let join = JoinAnswer {
            interface_name: InterfaceName { src_name: "weftp1c".into(), dst_prefix: "eth".into() },
            gateway: "10.99.0.1".into(),
            gateway_ipv6: String::new(),
            static_routes: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&join).unwrap(),
            r#"{"InterfaceName":{"SrcName":"weftp1c","DstPrefix":"eth"},"Gateway":"10.99.0.1"}"#
        );
        let route = StaticRoute {
            destination: "169.254.53.53/32".into(),
            route_type: 0,
            next_hop: "10.99.0.1".into(),
        };
        assert_eq!(
            serde_json::to_string(&route).unwrap(),
            r#"{"Destination":"169.254.53.53/32","RouteType":0,"NextHop":"10.99.0.1"}"#
        );
        let caps = IpamCapabilities { requires_mac_address: true };
        assert_eq!(serde_json::to_string(&caps).unwrap(), r#"{"RequiresMACAddress":true}"#);
        let pool = PoolAnswer { pool_id: "id".into(), pool: "10.1.0.0/24".into(), data: BTreeMap::new() };
        assert_eq!(
            serde_json::to_string(&pool).unwrap(),
            r#"{"PoolID":"id","Pool":"10.1.0.0/24","Data":{}}"#
        );
        assert_eq!(serde_json::to_string(&CreateEndpointAnswer::default()).unwrap(), r#"{"Interface":null}"#);
    }
}
