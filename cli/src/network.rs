//! `weft network`: create, ls, inspect, rm, prune through the controllers; connect and
//! disconnect through the local agent.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use tonic::Code;
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;

use crate::failure::{Failure, Result, key_value};
use crate::output::{self, Row};
use crate::show::{inspect_each, print, rows_or_format};
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCommand {
    /// Create a network that spans every host.
    #[command(
        after_help = "Examples:\n  weft network create backend\n  weft network create --subnet 10.1.0.0/24 --gateway 10.1.0.254 --ip-range 10.1.0.128/25 app\n  weft network create --ipv6 --subnet fd00:10::/64 dual\n  weft network create -o encrypted=true -o com.docker.network.driver.mtu=1300 secrets"
    )]
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show networks in detail, as a JSON array (endpoints on every host under Containers).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while containers are connected).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network without containers.
    Prune {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
        /// label=KEY, label=KEY=VALUE, label!=KEY, label!=KEY=VALUE.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Connect a container (a network namespace on this host) to a network.
    #[command(
        after_help = "Example:\n  weft network connect --ip 10.1.0.10 --alias api backend api-1 --netns /run/netns/api1"
    )]
    Connect(ConnectArgs),
    /// Disconnect a container on this host from a network.
    Disconnect {
        network: String,
        container: String,
        /// Also when this host's agent does not know the container: remove its endpoint
        /// through the controllers.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    name: String,
    /// Only "overlay".
    #[arg(short, long, default_value = "overlay")]
    driver: String,
    /// Subnet in CIDR form (one IPv4, one IPv6).
    #[arg(long)]
    subnet: Vec<String>,
    /// Gateway of the (IPv4, then IPv6) subnet.
    #[arg(long)]
    gateway: Vec<String>,
    /// Allocate container addresses from this sub-range.
    #[arg(long)]
    ip_range: Vec<String>,
    /// Reserve an address: NAME=IP.
    #[arg(long)]
    aux_address: Vec<String>,
    /// Give the network an IPv6 subnet too.
    #[arg(long)]
    ipv6: bool,
    /// No access to or from outside the network.
    #[arg(long)]
    internal: bool,
    #[arg(long)]
    attachable: bool,
    /// KEY=VALUE.
    #[arg(long)]
    label: Vec<String>,
    /// Driver options KEY=VALUE: com.docker.network.bridge.name, ...enable_ip_masquerade,
    /// ...enable_icc, com.docker.network.driver.mtu, ...container_iface_prefix, encrypted.
    #[arg(short = 'o', long = "opt")]
    opt: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// name=…, id=…, driver=…, label=KEY or label=KEY=VALUE.
    #[arg(short, long)]
    filter: Vec<String>,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Full ids.
    #[arg(long)]
    no_trunc: bool,
    /// table, json, or a template such as "{{.Name}}\t{{.Subnet}}".
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    network: String,
    /// The container's id (also its DNS name unless --name).
    container: String,
    /// The container's network namespace: a path, or a name under /run/netns.
    #[arg(long)]
    netns: String,
    /// DNS name of the container (default: the container argument).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    #[arg(long)]
    ip6: Option<String>,
    #[arg(long)]
    alias: Vec<String>,
    /// Return only once every host with a container on the network can reach this one.
    #[arg(long)]
    wait: bool,
    /// Publish a container port on this host: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|udp|sctp].
    #[arg(long, short = 'p', value_name = "SPEC")]
    publish: Vec<String>,
    /// Publish every --expose port on a free host port.
    #[arg(long, short = 'P')]
    publish_all: bool,
    /// A port --publish-all publishes: PORT[-END][/tcp|udp|sctp].
    #[arg(long, value_name = "PORT")]
    expose: Vec<String>,
}

/// `-p` specs as the attach API takes them; a bad one stops the command before anything is sent.
fn port_requests(specs: &[String]) -> Result<Vec<agent::PortRequest>> {
    specs
        .iter()
        .map(|text| {
            let spec: weft_core::PortSpec =
                text.parse().map_err(|e: weft_core::Error| Failure::new(e.to_string()))?;
            Ok(weft_api::agent_client::port_request(&spec))
        })
        .collect()
}

fn exposed_ports(ports: &[String]) -> Result<Vec<agent::ExposedPort>> {
    ports
        .iter()
        .map(|text| {
            let (protocol, range) =
                weft_core::ports::parse_exposed(text).map_err(|e| Failure::new(e.to_string()))?;
            Ok(agent::ExposedPort {
                protocol: protocol.to_string(),
                port: (*range.start()).into(),
                port_end: (*range.end()).into(),
            })
        })
        .collect()
}

fn create_request(args: CreateArgs) -> Result<pb::CreateNetworkRequest> {
    let (mut v4, mut v6): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for subnet in &args.subnet {
        if subnet.contains(':') { v6.push(subnet.clone()) } else { v4.push(subnet.clone()) }
    }
    if v4.len() > 1 || v6.len() > 1 {
        return Err(Failure::new("--subnet: a weft network has at most one IPv4 and one IPv6 subnet"));
    }
    let mut configs: Vec<pb::IpamConfig> =
        v4.into_iter().chain(v6).map(|subnet| pb::IpamConfig { subnet, ..Default::default() }).collect();
    let family_of = |ip: &str| if ip.contains(':') { 6 } else { 4 };
    let config_for = |configs: &mut Vec<pb::IpamConfig>, what: &str, ip: &str| -> Result<usize> {
        let family = family_of(ip.split('/').next().unwrap_or(ip));
        if let Some(i) = configs.iter().position(|c| family_of(&c.subnet) == family && !c.subnet.is_empty()) {
            return Ok(i);
        }
        if family == 4 && configs.iter().all(|c| family_of(&c.subnet) == 6) {
            configs.insert(0, pb::IpamConfig::default());
            return Ok(0);
        }
        Err(Failure::new(format!("{what} {ip}: give the IPv{family} --subnet it belongs to")))
    };
    for gateway in &args.gateway {
        let i = config_for(&mut configs, "--gateway", gateway)?;
        configs[i].gateway = gateway.clone();
    }
    for range in &args.ip_range {
        let i = config_for(&mut configs, "--ip-range", range)?;
        configs[i].ip_range = range.clone();
    }
    for aux in &args.aux_address {
        let (name, ip) = key_value("--aux-address", aux)?;
        let i = config_for(&mut configs, "--aux-address", &ip)?;
        configs[i].auxiliary_addresses.insert(name, ip);
    }
    let labels = args.label.iter().map(|l| key_value("--label", l)).collect::<Result<BTreeMap<_, _>>>()?;
    let options = args.opt.iter().map(|o| key_value("--opt", o)).collect::<Result<BTreeMap<_, _>>>()?;
    Ok(pb::CreateNetworkRequest {
        name: args.name,
        driver: args.driver,
        ipam_config: configs,
        enable_ipv6: args.ipv6,
        internal: args.internal,
        attachable: args.attachable,
        options,
        labels,
        request_id: String::new(),
    })
}

fn list_request(filters: &[String]) -> Result<pb::ListNetworksRequest> {
    let mut request = pb::ListNetworksRequest::default();
    for filter in filters {
        let (key, value) = key_value("--filter", filter)?;
        match key.as_str() {
            "name" => request.names.push(value),
            "id" => request.ids.push(value),
            "driver" => request.drivers.push(value),
            "label" => request.labels.push(value),
            other => {
                return Err(Failure::new(format!(
                    "--filter {other:?}: filters are name=, id=, driver= and label="
                )));
            }
        }
    }
    Ok(request)
}

/// A namespace name is taken as `/run/netns/NAME`, as `ip netns` makes them.
fn netns_path(netns: &str) -> String {
    if netns.starts_with('/') { netns.to_string() } else { format!("/run/netns/{netns}") }
}

/// `--filter label=…` / `label!=…` as the controllers take them ("key", "key=value",
/// "key!=value", "!key").
fn labels_for_prune(filters: &[String]) -> Result<Vec<String>> {
    filters
        .iter()
        .map(|f| {
            if let Some(value) = f.strip_prefix("label!=") {
                Ok(match value.split_once('=') {
                    Some((k, v)) => format!("{k}!={v}"),
                    None => format!("!{value}"),
                })
            } else if let Some(value) = f.strip_prefix("label=") {
                Ok(value.to_string())
            } else {
                Err(Failure::new(format!(
                    "--filter {f:?}: prune filters are label=KEY[=VALUE] and label!=KEY[=VALUE]"
                )))
            }
        })
        .collect()
}

pub(crate) async fn run(target: &Target, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => {
            let request = create_request(args)?;
            let created = target
                .write(|channel, request_id| {
                    let request = pb::CreateNetworkRequest { request_id, ..request.clone() };
                    async move { NetworkServiceClient::new(channel).create_network(request).await }
                })
                .await?;
            print(&format!("{}\n", created.id));
        }
        NetworkCommand::Ls(args) => {
            let request = list_request(&args.filter)?;
            let mut client = NetworkServiceClient::new(target.controller().await?);
            let mut listed = client.list_networks(request).await?.into_inner();
            // By name, as `docker network ls` sorts.
            listed.networks.sort_by(|a, b| a.name.cmp(&b.name));
            if args.quiet {
                for n in &listed.networks {
                    print(&format!("{}\n", output::short(&n.id, !args.no_trunc)));
                }
            } else {
                let rows: Vec<Row> =
                    listed.networks.iter().map(|n| output::network_row(n, !args.no_trunc)).collect();
                rows_or_format("network", &args.format, output::NETWORK_COLUMNS, &rows)?;
            }
        }
        NetworkCommand::Inspect { networks } => {
            let client = NetworkServiceClient::new(target.controller().await?);
            inspect_each(networks, |reference| {
                let mut client = client.clone();
                async move {
                    let found =
                        client.inspect_network(pb::InspectNetworkRequest { network: reference }).await?;
                    let found = found.into_inner();
                    Ok(found.network.map(|n| output::inspect_network(&n, &found.endpoints)))
                }
            })
            .await?;
        }
        NetworkCommand::Rm { networks } => {
            let mut failures = Vec::new();
            for reference in networks {
                let removed = target
                    .write(|channel, request_id| {
                        let request =
                            pb::RemoveNetworkRequest { network: reference.clone(), force: false, request_id };
                        async move { NetworkServiceClient::new(channel).remove_network(request).await }
                    })
                    .await;
                match removed {
                    Ok(_) => print(&format!("{reference}\n")),
                    Err(failure) => failures.push(failure.message),
                }
            }
            if !failures.is_empty() {
                return Err(Failure::new(failures.join("; ")));
            }
        }
        NetworkCommand::Prune { force, filter } => {
            let labels = labels_for_prune(&filter)?;
            if !force {
                eprint!(
                    "WARNING! This will remove all weft networks without containers, on every host.\nAre you sure you want to continue? [y/N] "
                );
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Ok(());
                }
            }
            let pruned = target
                .write(|channel, request_id| {
                    let request =
                        pb::PruneNetworksRequest { labels: labels.clone(), created_before: None, request_id };
                    async move { NetworkServiceClient::new(channel).prune_networks(request).await }
                })
                .await?;
            if !pruned.removed.is_empty() {
                print("Deleted Networks:\n");
                for n in &pruned.removed {
                    print(&format!("{}\n", n.name));
                }
            }
        }
        NetworkCommand::Connect(args) => {
            let mut agent = target.agent().await?;
            let request = agent::AttachRequest {
                netns: netns_path(&args.netns),
                network: args.network,
                container_name: args.name.unwrap_or_else(|| args.container.clone()),
                container_id: args.container,
                aliases: args.alias,
                ipv4_address: args.ip.unwrap_or_default(),
                ipv6_address: args.ip6.unwrap_or_default(),
                mac_address: String::new(),
                wait_everywhere: args.wait,
                write_resolv_conf: !args.netns.starts_with('/') || args.netns.starts_with("/run/netns/"),
                publish: port_requests(&args.publish)?,
                publish_all: args.publish_all,
                expose: exposed_ports(&args.expose)?,
                ..Default::default()
            };
            agent.attach(request).await?;
        }
        NetworkCommand::Disconnect { network, container, force } => {
            let mut agent = target.agent().await?;
            let detached = agent
                .detach(agent::DetachRequest { network: network.clone(), container_id: container.clone() })
                .await;
            match detached {
                Ok(_) => {}
                Err(status) if force && status.code() == Code::NotFound => {
                    let on_network = pb::ContainerOnNetwork { network, container_id: container };
                    target
                        .write(|channel, request_id| {
                            let request = pb::RemoveEndpointRequest {
                                target: Some(pb::remove_endpoint_request::Target::Container(
                                    on_network.clone(),
                                )),
                                request_id,
                            };
                            async move { EndpointServiceClient::new(channel).remove_endpoint(request).await }
                        })
                        .await?;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
    Ok(())
}
