//! `weft`: `docker network` for a whole weft cluster. Networks, endpoints, nodes and the
//! controller cluster through the controllers' gRPC API; connecting containers through the
//! local node agent's socket.

mod output;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tonic::transport::Channel;
use tonic::{Code, Status};
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;

use crate::output::Row;

const EXAMPLES: &str = "\
Examples:
  weft network create --subnet 10.10.0.0/24 backend
  weft network create -o encrypted=true secrets
  weft network ls --filter label=team=web
  weft network connect --alias db --wait backend postgres-1 --netns /run/netns/pg1
  weft network inspect backend
  weft node ls
  weft cluster status

Connection: --controller (or WEFT_CONTROLLER, or `controller` in the config file) lists
controller addresses, comma separated; the first that answers is used. The local node
agent is reached at --node-socket (WEFT_NODE_SOCKET, default /run/weft/agent.sock).";

/// weft: container networks across many hosts, driven like `docker network`.
#[derive(Debug, Parser)]
#[command(name = "weft", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// On error, print everything known about it (gRPC code and details).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Connection {
    /// Controller addresses (host:port, comma separated).
    #[arg(long, global = true, env = "WEFT_CONTROLLER", value_delimiter = ',')]
    controller: Vec<String>,
    /// The local node agent's socket.
    #[arg(long, global = true, env = "WEFT_NODE_SOCKET")]
    node_socket: Option<PathBuf>,
    /// A TOML file with `controller = ["host:port", ...]` and `node_socket = "..."`
    /// (default: ~/.config/weft/config.toml when it exists).
    #[arg(long, global = true, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// TLS credentials for the controllers (ca.pem, cert.pem, key.pem), e.g. the admin
    /// directory `weft pki init` made. Without, weft talks plaintext (controllers started
    /// with --insecure).
    #[arg(long, global = true, env = "WEFT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Deadline of each request, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage networks (create, ls, inspect, rm, prune, connect, disconnect).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// The hosts in the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Container interfaces on every host.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// The controller cluster: status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Join tokens: how a new host (or controller) gets its credential.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The cluster's certificates: a CA and credentials for controllers, admins and hosts.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
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
struct CreateArgs {
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
struct ListArgs {
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
struct ConnectArgs {
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
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List hosts.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show hosts in detail, as a JSON array.
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove hosts from the cluster (and their endpoints).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Give this host a new WireGuard key (through the local agent).
    RotateKey,
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// List endpoints.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        no_trunc: bool,
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; prints it and the CA fingerprint a joining host checks.
    #[command(
        after_help = "Example:\n  weft token create --ttl 3600\n  weft-node --join-token weft1.… --ca-fingerprint … --tls-dir /etc/weft/tls …"
    )]
    Create {
        /// node or controller.
        #[arg(long, default_value = "node")]
        role: String,
        /// Lifetime in seconds (default 24 hours, at most 30 days).
        #[arg(long, default_value_t = 86_400)]
        ttl: u32,
    },
    /// List tokens (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Make a token unusable.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make a cluster CA in DIR (ca.pem, ca-key.pem), credentials for each controller
    /// (DIR/controller-ID) and an admin credential (DIR/admin).
    #[command(
        after_help = "Example:\n  weft pki init --dir /etc/weft/pki --cluster prod --controller 1=10.0.0.1 --controller 2=10.0.0.2 --controller 3=10.0.0.3"
    )]
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cluster: String,
        /// ID=HOST: a controller's id and the address or name clients dial it by (repeat).
        #[arg(long, required = true)]
        controller: Vec<String>,
        /// The admin credential's name.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// Issue a credential from the CA in DIR: for a host (--node NAME), an admin, or a
    /// controller (--controller ID=HOST, e.g. to renew one before it expires: issue, then
    /// restart the members one at a time).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, group = "holder")]
        node: Option<String>,
        #[arg(long, group = "holder")]
        admin: Option<String>,
        #[arg(long, group = "holder")]
        controller: Option<String>,
        /// Where to write ca.pem, cert.pem and key.pem.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Leader, term, revision and the health of each member.
    Status,
    /// The members.
    Members,
    /// Add a member (start it with --join first).
    Add { id: u64, address: String },
    /// Remove a member.
    Remove { id: u64 },
}

/// A failure to show the user: one line, with the gRPC details only under --debug.
#[derive(Debug)]
struct Failure {
    message: String,
    detail: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), detail: None }
    }
}

impl Failure {
    /// Several lookups that found nothing: their messages on one line.
    fn missing(statuses: &[Status]) -> Failure {
        Failure {
            message: statuses.iter().map(|s| s.message()).collect::<Vec<_>>().join("; "),
            detail: Some(statuses.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join("\n")),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        let message = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
                if status.message().is_empty() =>
            {
                format!("{:?}", status.code())
            }
            _ => status.message().to_string(),
        };
        Failure { message, detail: Some(format!("{status:?}")) }
    }
}

type Result<T> = std::result::Result<T, Failure>;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    controller: Option<Vec<String>>,
    node_socket: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
}

/// Where to reach the cluster, with flags over environment over the config file.
struct Target {
    controllers: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    node_socket: PathBuf,
    timeout: Duration,
}

impl Target {
    fn resolve(c: &Connection) -> Result<Target> {
        let default_file =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/weft/config.toml"));
        let file = match (&c.config, default_file) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) if path.exists() => Some(path),
            _ => None,
        };
        let config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Failure::new(format!("config file {}: {e}", path.display())))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| Failure::new(format!("config file {}: {}", path.display(), e.message())))?
            }
            None => ConfigFile::default(),
        };
        let controllers = if c.controller.is_empty() {
            config.controller.unwrap_or_else(|| vec!["127.0.0.1:7001".to_string()])
        } else {
            c.controller.clone()
        };
        let tls = match c.tls_dir.clone().or(config.tls_dir) {
            Some(dir) => Some(
                weft_pki::Credentials::load(&dir)
                    .map_err(|e| Failure::new(format!("--tls-dir: {e}")))?
                    .client(),
            ),
            None => None,
        };
        Ok(Target {
            tls,
            controllers: controllers.into_iter().filter(|a| !a.trim().is_empty()).collect(),
            node_socket: c
                .node_socket
                .clone()
                .or(config.node_socket)
                .unwrap_or_else(|| PathBuf::from("/run/weft/agent.sock")),
            timeout: Duration::from_secs(c.timeout.max(1)),
        })
    }

    /// A channel to the first controller that accepts a connection.
    async fn controller(&self) -> Result<Channel> {
        let mut problems = Vec::new();
        for address in &self.controllers {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let uri = if address.contains("://") { address.clone() } else { format!("{scheme}://{address}") };
            let mut endpoint = match Channel::from_shared(uri) {
                Ok(e) => e.connect_timeout(Duration::from_secs(2)).timeout(self.timeout),
                Err(_) => {
                    problems.push(format!("{address}: not a host:port"));
                    continue;
                }
            };
            if let Some(tls) = &self.tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| Failure::new(format!("TLS: {e}")))?;
            }
            match endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => problems.push(format!("{address}: {}", source_text(&e))),
            }
        }
        Err(Failure::new(format!(
            "cannot reach a controller ({}); set --controller or WEFT_CONTROLLER",
            problems.join("; ")
        )))
    }

    /// Sends a write, trying again (on the first controller that accepts a connection) while
    /// the answer is Unavailable — leadership moving, a member restarting — until the
    /// timeout. `call` builds the request with the same request id every time, so a try that
    /// committed before its answer was lost is answered, not repeated or refused as taken.
    async fn write<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Channel, String) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let request_id = new_request_id();
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let answer = call(self.controller().await?, request_id.clone()).await;
            match answer {
                Ok(done) => return Ok(done.into_inner()),
                Err(status)
                    if status.code() == Code::Unavailable && std::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    async fn agent(&self) -> Result<agent::agent_service_client::AgentServiceClient<Channel>> {
        weft_node::client::connect(&self.node_socket).await.map_err(|e| {
            Failure::new(format!(
                "cannot reach the node agent at {} ({}); is weft-node running here? (--node-socket / WEFT_NODE_SOCKET)",
                self.node_socket.display(),
                source_text(&e)
            ))
        })
    }
}

/// A request id no other write shares: this process, this instant and a counter.
fn new_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(char::is_ascii_graphic).take(48).collect();
    format!("weft-cli/{host}/{}/{nanos:x}.{count}", std::process::id())
}

/// The innermost cause of an error: "Connection refused" rather than "transport error".
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

fn key_value(what: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Failure::new(format!("{what} {text:?}: expected KEY=VALUE"))),
    }
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

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`weft network ls | head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
}

fn print_json(value: &serde_json::Value) {
    print(&format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()));
}

fn rows_or_format(kind: &str, format: &str, columns: &[&str], rows: &[Row]) -> Result<()> {
    print(&output::format_rows(kind, format, columns, rows).map_err(Failure::new)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let target = Target::resolve(&cli.connection)?;
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
        }
        Command::Network(command) => network(&target, command).await?,
        Command::Node(command) => node(&target, command).await?,
        Command::Endpoint(EndpointCommand::Ls { network, node, no_trunc, format }) => {
            let mut client = EndpointServiceClient::new(target.controller().await?);
            let listed = client
                .list_endpoints(pb::ListEndpointsRequest {
                    network: network.unwrap_or_default(),
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let mut endpoints = listed.endpoints;
            endpoints.sort_by(|a, b| {
                (&a.network_name, &a.node, &a.container_name).cmp(&(
                    &b.network_name,
                    &b.node,
                    &b.container_name,
                ))
            });
            let rows: Vec<Row> = endpoints.iter().map(|e| output::endpoint_row(e, !no_trunc)).collect();
            rows_or_format("endpoint", &format, output::ENDPOINT_COLUMNS, &rows)?;
        }
        Command::Cluster(command) => cluster(&target, command).await?,
        Command::Pki(command) => pki(command)?,
        Command::Token(command) => token(&target, command).await?,
    }
    Ok(())
}

async fn network(target: &Target, command: NetworkCommand) -> Result<()> {
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

/// Looks each reference up and prints what was found as one JSON array; as with Docker, each
/// one not found makes the command fail after the rest are printed.
async fn inspect_each<F, Fut>(references: Vec<String>, inspect: F) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Option<serde_json::Value>, Status>>,
{
    let mut documents = Vec::new();
    let mut missing = Vec::new();
    for reference in references {
        match inspect(reference).await {
            Ok(found) => documents.extend(found),
            Err(status) if status.code() == Code::NotFound => missing.push(status),
            Err(status) => return Err(status.into()),
        }
    }
    print_json(&serde_json::Value::Array(documents));
    if missing.is_empty() { Ok(()) } else { Err(Failure::missing(&missing)) }
}

async fn token(target: &Target, command: TokenCommand) -> Result<()> {
    use weft_api::pb::token_service_client::TokenServiceClient;
    let mut client = TokenServiceClient::new(target.controller().await?);
    let row = |t: &pb::Token| -> Row {
        let role = match pb::TokenRole::try_from(t.role) {
            Ok(pb::TokenRole::Controller) => "controller",
            _ => "node",
        };
        vec![
            ("ID", t.id.clone()),
            ("Role", role.to_string()),
            ("Expires", output::time(t.expires.as_ref())),
            ("Revoked", t.revoked.to_string()),
        ]
    };
    match command {
        TokenCommand::Create { role, ttl } => {
            let role = match role.as_str() {
                "node" => pb::TokenRole::Node,
                "controller" => pb::TokenRole::Controller,
                other => {
                    return Err(Failure::new(format!(
                        "--role {other:?}: a token is for a node or a controller"
                    )));
                }
            };
            let made = client
                .create_token(pb::CreateTokenRequest { role: role.into(), ttl_seconds: ttl })
                .await?
                .into_inner();
            print(&format!(
                "{}\n\nOn the new host:\n  weft-node --join-token {} --ca-fingerprint {} --tls-dir /etc/weft/tls --controllers …\n",
                made.secret_token, made.secret_token, made.ca_fingerprint
            ));
        }
        TokenCommand::Ls => {
            let listed = client.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            let rows: Vec<Row> = listed.tokens.iter().map(row).collect();
            print(&output::table("token", &["ID", "Role", "Expires", "Revoked"], &rows));
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await?;
            print(&format!("{id}\n"));
        }
    }
    Ok(())
}

fn pki(command: PkiCommand) -> Result<()> {
    use weft_pki::{Authority, Role};
    let failed = |e: weft_pki::PkiError| Failure::new(e.to_string());
    match command {
        PkiCommand::Init { dir, cluster, controller, admin } => {
            if dir.join("ca-key.pem").exists() {
                return Err(Failure::new(format!(
                    "{} already holds a CA; use `weft pki issue` to add credentials",
                    dir.display()
                )));
            }
            let members = controller
                .iter()
                .map(|c| {
                    let (id, host) = key_value("--controller", c)?;
                    let id: u64 = id
                        .parse()
                        .map_err(|_| Failure::new(format!("--controller {c:?}: the id is a number")))?;
                    Ok((id, host))
                })
                .collect::<Result<Vec<_>>>()?;
            let ca = Authority::create(&cluster).map_err(failed)?;
            ca.save(&dir).map_err(failed)?;
            for (id, host) in members {
                let credentials = ca.issue(Role::Controller, &id.to_string(), &[host]).map_err(failed)?;
                let member_dir = dir.join(format!("controller-{id}"));
                credentials.save(&member_dir).map_err(failed)?;
                // Controllers sign joining hosts' requests (join tokens) with it.
                ca.save(&member_dir).map_err(failed)?;
            }
            ca.issue(Role::Admin, &admin, &[]).map_err(failed)?.save(&dir.join("admin")).map_err(failed)?;
            print(&format!(
                "CA and credentials in {}: keep ca-key.pem safe; give each controller its controller-ID directory (--tls-dir); use admin/ with weft --tls-dir\n",
                dir.display()
            ));
        }
        PkiCommand::Issue { dir, node, admin, controller, out } => {
            let ca = Authority::load(&dir).map_err(failed)?;
            let credentials = match (node, admin, controller) {
                (Some(node), None, None) => ca.issue(Role::Node, &node, &[]),
                (None, Some(admin), None) => ca.issue(Role::Admin, &admin, &[]),
                (None, None, Some(controller)) => {
                    let (id, host) = key_value("--controller", &controller)?;
                    ca.issue(Role::Controller, &id, &[host])
                }
                _ => return Err(Failure::new("give one of --node NAME, --admin NAME, --controller ID=HOST")),
            }
            .map_err(failed)?;
            credentials.save(&out).map_err(failed)?;
        }
    }
    Ok(())
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

async fn node(target: &Target, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls { format } => {
            let mut client = NodeServiceClient::new(target.controller().await?);
            let mut listed = client.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
            listed.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Row> = listed.nodes.iter().map(output::node_row).collect();
            rows_or_format("node", &format, output::NODE_COLUMNS, &rows)?;
        }
        NodeCommand::Inspect { nodes } => {
            let client = NodeServiceClient::new(target.controller().await?);
            inspect_each(nodes, |name| {
                let mut client = client.clone();
                async move {
                    let found = client.inspect_node(pb::InspectNodeRequest { name }).await?.into_inner();
                    Ok(found.node.map(|n| output::inspect_node(&n, &found.endpoints)))
                }
            })
            .await?;
        }
        NodeCommand::Rm { nodes } => {
            for name in nodes {
                target
                    .write(|channel, request_id| {
                        let request = pb::RemoveNodeRequest { name: name.clone(), request_id };
                        async move { NodeServiceClient::new(channel).remove_node(request).await }
                    })
                    .await?;
                print(&format!("{name}\n"));
            }
        }
        NodeCommand::RotateKey => {
            let mut agent = target.agent().await?;
            let rotated = agent.rotate_key(agent::RotateKeyRequest {}).await?.into_inner();
            print(&format!("{}\n", rotated.public_key));
        }
    }
    Ok(())
}

async fn cluster(target: &Target, command: ClusterCommand) -> Result<()> {
    let mut client = ClusterServiceClient::new(target.controller().await?);
    match command {
        ClusterCommand::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            let leader = if s.leader_id == 0 {
                "none (no quorum?)".to_string()
            } else {
                format!("{} ({})", s.leader_id, s.leader_address)
            };
            print(&format!(
                "Cluster:        {}\nAnswered by:    member {}\nLeader:         {leader}\nTerm:           {}\nRevision:       {}\nApplied index:  {}\nSnapshot index: {}\n\n",
                s.cluster_id, s.member_id, s.term, s.revision, s.applied_index, s.snapshot_index
            ));
            let rows: Vec<Row> =
                s.members.iter().map(|m| output::member_row(m, s.leader_id, s.members_reported_by)).collect();
            print(&output::table("member", output::MEMBER_COLUMNS, &rows));
        }
        ClusterCommand::Members => {
            let status = client.status(pb::StatusRequest {}).await?.into_inner();
            let listed = client.list_members(pb::ListMembersRequest {}).await?.into_inner();
            let rows: Vec<Row> = listed
                .members
                .iter()
                .map(|m| output::member_row(m, status.leader_id, listed.members_reported_by))
                .collect();
            print(&output::table("member", output::MEMBER_COLUMNS, &rows));
        }
        ClusterCommand::Add { id, address } => {
            client.add_member(pb::AddMemberRequest { id, address }).await?;
            print(&format!("{id}\n"));
        }
        ClusterCommand::Remove { id } => {
            client.remove_member(pb::RemoveMemberRequest { id }).await?;
            print(&format!("{id}\n"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = cli.debug;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weft: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("weft: {}", failure.message);
            if debug && let Some(detail) = failure.detail {
                eprintln!("{detail}");
            }
            ExitCode::FAILURE
        }
    }
}
