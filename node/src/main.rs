//! `weft-node`: parses flags, finds the underlay, and runs the agent's loops and its attach API.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_dataplane::Kernel;
use weft_node::agent::{Agent, Settings};
use weft_node::controllers::Controllers;
use weft_node::desired::Host;
use weft_node::tunnel::{Mode, Tunnel};

/// weft's host agent: registers this host with the controllers, keeps its bridges, VXLAN
/// devices, veths and forwarding entries in line with the registry, and attaches containers
/// through a local unix socket.
///
/// Example:
///   weft-node --controllers 10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// Controller members (host:port, comma separated); the agent moves to the next when one
    /// does not answer. WEFT_CONTROLLER, as for the `weft` CLI; WEFT_CONTROLLERS, the name
    /// earlier installs wrote, is read when it is unset.
    #[arg(long, alias = "controller", env = "WEFT_CONTROLLER", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Remove everything weft made on this host (its links and switch namespace, its nftables
    /// tables, the state file) and exit. Containers lose their weft interfaces; stop the agent
    /// first.
    #[arg(long)]
    uninstall: bool,
    /// This host's name in the cluster (default: the kernel's hostname).
    #[arg(long, env = "WEFT_NODE_NAME")]
    name: Option<String>,
    /// The address other hosts send VXLAN to (default: the IPv4 address of the default
    /// route's interface).
    #[arg(long)]
    underlay_address: Option<IpAddr>,
    /// The attach API's unix socket.
    #[arg(long, default_value = "/run/weft/agent.sock")]
    socket: PathBuf,
    /// Serve Docker's network and IPAM plugin protocols on this socket (dockerd finds
    /// `/run/docker/plugins/weft.sock` as the driver `weft`). Off unless given.
    #[arg(long, env = "WEFT_DOCKER_PLUGIN_SOCKET")]
    docker_plugin_socket: Option<PathBuf>,
    /// dockerd's API socket, where the plugin learns the names Docker does not send it
    /// (networks', containers', aliases).
    #[arg(long, default_value = "/var/run/docker.sock")]
    docker_api_socket: PathBuf,
    /// With the Docker plugin on: the address, the same on every host, where weft's DNS also
    /// answers, on a link of weft's. Set it as dockerd's `dns` (daemon.json) so that Docker's
    /// 127.0.0.11 forwards the names it does not know, the containers on other hosts, to weft.
    #[arg(long, default_value = "169.254.53.53")]
    docker_dns_address: std::net::IpAddr,
    /// The network namespace, pinned at /run/netns/NAME, that holds the networks' bridges,
    /// VXLAN devices and the host ends of the containers' veths (`ip -n NAME bridge fdb`).
    #[arg(long, env = "WEFT_SWITCH_NAMESPACE", default_value = "weft-switch")]
    switch_namespace: String,
    /// Where the agent keeps what only this host knows (container namespaces, interface names).
    #[arg(long, default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Heartbeat period.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Full resync period: drift (an entry deleted by hand) is repaired within it.
    #[arg(long, default_value_t = 10_000)]
    resync_ms: u64,
    /// Deadline of every request to the controllers.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Port of the DNS server on each local network's gateway.
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// Resolvers for names that are not containers' (ip or ip:port, comma separated; default:
    /// the nameservers of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// TTL of weft's DNS answers, in seconds: short, since they follow the registry.
    #[arg(long, default_value_t = 5)]
    dns_ttl: u32,
    /// How long one upstream resolver gets before the next is asked.
    #[arg(long, default_value_t = 1000)]
    dns_upstream_timeout_ms: u64,
    /// Forwards to upstream resolvers in flight at once; beyond that, queries get REFUSED.
    #[arg(long, default_value_t = 1024)]
    dns_max_forwards: usize,
    /// How to run WireGuard for encrypted networks: the kernel module where it exists and
    /// wireguard-go otherwise (auto), one of them only, or not at all.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    wireguard: Mode,
    /// The WireGuard interface. wireguard-go's control sockets share one directory on the
    /// machine, so hosts sharing a machine (namespaces) need different names.
    #[arg(long, env = "WEFT_WIREGUARD_INTERFACE", default_value = "weftwg0")]
    wireguard_interface: String,
    /// UDP port WireGuard listens on; other hosts send to it on the underlay.
    #[arg(long, default_value_t = 51820)]
    wireguard_port: u16,
    /// This host's TLS credentials: ca.pem (the cluster CA), cert.pem and key.pem (0600) for
    /// `node:NAME`, as `weft pki issue --node NAME` writes them.
    #[arg(long, env = "WEFT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// With --tls-dir holding no credential yet: join the cluster with this token (from
    /// `weft token create`). A key is made here and only its certificate request is sent.
    #[arg(long, env = "WEFT_JOIN_TOKEN", requires = "ca_fingerprint", requires = "tls_dir")]
    join_token: Option<String>,
    /// SHA-256 of the cluster CA certificate (printed by `weft token create`): the controller
    /// is checked against it before the token is sent.
    #[arg(long, env = "WEFT_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// Renew the host's credential when it expires within this many days (the agent makes
    /// a new key and asks a controller to sign it, presenting the current credential).
    #[arg(long, default_value_t = 30)]
    renew_within_days: u64,
    /// How often to check the credential's expiry.
    #[arg(long, default_value_t = 3_600_000)]
    renew_check_ms: u64,
    /// Talk to the controllers in plaintext (controllers started with --insecure).
    #[arg(long)]
    insecure: bool,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_string())
}

/// Removes weft's links, switch namespace, WireGuard interface and tables from this host, and
/// its state files.
async fn uninstall(
    kernel: Kernel,
    switch_namespace: &str,
    state_dir: &std::path::Path,
    wireguard_interface: &str,
) -> anyhow::Result<()> {
    let switch = weft_dataplane::switch::path(switch_namespace);
    let kernel = if switch.exists() {
        kernel.with_switch(&switch).await.context("opening the switch")?
    } else {
        kernel
    };
    let observed = kernel.observe().await.context("listing links")?;
    let ops = weft_dataplane::plan(&weft_dataplane::Desired::default(), &observed);
    let errors = kernel.apply(&ops).await;
    weft_dataplane::rules::load(&weft_dataplane::rules::removal(), None)
        .context("removing weft's nftables tables")?;
    weft_dataplane::switch::remove(switch_namespace).context("removing the switch namespace")?;
    Tunnel::remove(wireguard_interface, &kernel).await.context("removing the WireGuard interface")?;
    if let Some(first) = errors.first() {
        anyhow::bail!("removing weft's links: {first} ({} problems)", errors.len());
    }
    for file in ["sandboxes.json", "wireguard.key"] {
        match std::fs::remove_file(state_dir.join(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("removing {}", state_dir.join(file).display())),
        }
    }
    match std::fs::remove_dir_all(state_dir.join("attachments")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("removing {}", state_dir.join("attachments").display())),
    }
    println!("removed {} links and weft's nftables tables", ops.len());
    Ok(())
}

/// Keeps the host's credential from expiring: when it has less than `within` left, a new key
/// is made here, a controller signs it (the current credential vouching for the request), the
/// files are replaced and new connections present it. Connections open meanwhile keep the
/// old one, which is still valid: nothing is interrupted. A credential an operator put in
/// `dir` (`weft pki issue`) is presented from the next check on, without a restart.
/// `presented` is the certificate new connections present now.
async fn renew_forever(
    controllers: &Controllers,
    name: &str,
    dir: &std::path::Path,
    mut presented: String,
    within: Duration,
    period: Duration,
) {
    loop {
        match renew_if_due(controllers, name, dir, &mut presented, within).await {
            Ok(true) => tracing::info!(dir = %dir.display(), "credential renewed"),
            Ok(false) => {}
            Err(e) => tracing::warn!("renewing the credential: {e:#}; retrying in {period:?}"),
        }
        tokio::time::sleep(period).await;
    }
}

async fn renew_if_due(
    controllers: &Controllers,
    name: &str,
    dir: &std::path::Path,
    presented: &mut String,
    within: Duration,
) -> anyhow::Result<bool> {
    use weft_api::pb::join_service_client::JoinServiceClient;
    let current = weft_pki::Credentials::load(dir).context("loading this host's credential")?;
    if current.cert != *presented {
        controllers.reconnect_with(current.client())?;
        *presented = current.cert.clone();
        tracing::info!(dir = %dir.display(), "presenting the credential found in the directory");
    }
    let now_ms =
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let standing =
        current.standing(now_ms, within).context("reading when this host's certificate expires")?;
    if standing == weft_pki::Standing::Valid {
        return Ok(false);
    }
    let (csr_pem, key) = weft_pki::certificate_request(weft_pki::Role::Node, name)
        .context("making this host's key and certificate request")?;
    let request = weft_api::pb::RenewRequest { csr_pem };
    let renewed = controllers
        .send(&request, |c, r| async move { JoinServiceClient::new(c).renew(r).await })
        .await
        .map_err(|status| anyhow::anyhow!("renewing this host's credential: {}", status.message()))?;
    let credentials = weft_pki::Credentials { ca: renewed.ca_pem, cert: renewed.certificate_pem, key };
    credentials.save(dir).context("saving the renewed credential")?;
    controllers.reconnect_with(credentials.client())?;
    *presented = credentials.cert;
    Ok(true)
}

/// Obtains this host's credential with a join token: the key is made here, the controller is
/// checked against the CA fingerprint, and the signed certificate is written to `dir`.
async fn join(
    controllers: &[String],
    name: &str,
    token: &str,
    fingerprint: &str,
    dir: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    use weft_api::pb::join_service_client::JoinServiceClient;
    let (csr_pem, key) = weft_pki::certificate_request(weft_pki::Role::Node, name)
        .context("making this host's key and certificate request")?;
    let mut problems = Vec::new();
    for address in controllers {
        let channel = match weft_pki::join::pinned_channel(address, fingerprint, timeout).await {
            Ok(channel) => channel,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let request = weft_api::pb::JoinRequest {
            token: token.to_string(),
            name: name.to_string(),
            csr_pem: csr_pem.clone(),
            addresses: vec![],
        };
        match JoinServiceClient::new(channel).join(request).await {
            Ok(joined) => {
                let joined = joined.into_inner();
                weft_pki::Credentials { ca: joined.ca_pem, cert: joined.certificate_pem, key }
                    .save(dir)
                    .context("saving the credential")?;
                tracing::info!(dir = %dir.display(), "joined the cluster: credential for node:{name} saved");
                return Ok(());
            }
            Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::FailedPrecondition) =>
            {
                problems.push(format!("{address}: {}", status.message()));
            }
            Err(status) => anyhow::bail!("joining the cluster: {}", status.message()),
        }
    }
    anyhow::bail!("joining the cluster: no controller took the token ({})", problems.join("; "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut flags = Flags::parse();
    if flags.controllers.is_empty() {
        flags.controllers = std::env::var("WEFT_CONTROLLERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
    }
    if flags.controllers.is_empty() && !flags.uninstall {
        anyhow::bail!("say where the controllers are: --controllers HOST:PORT,... (or WEFT_CONTROLLER)");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if flags.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        // Colours only on a terminal: journald and log files would keep the escape codes.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    }

    let kernel = Kernel::connect().context("connecting to the kernel")?;
    if flags.uninstall {
        return uninstall(kernel, &flags.switch_namespace, &flags.state_dir, &flags.wireguard_interface)
            .await;
    }
    let switch_namespace = flags.switch_namespace.clone();
    let switch = tokio::task::spawn_blocking(move || weft_dataplane::switch::ensure(&switch_namespace))
        .await?
        .context("making the switch namespace")?;
    let kernel = kernel.with_switch(&switch).await.context("opening the switch namespace")?;
    let (vtep, interface, underlay_mtu) =
        kernel.underlay(flags.underlay_address).await.context("finding the underlay")?;
    let name = match flags.name {
        Some(name) => name,
        None => hostname()?,
    };
    tracing::info!(%name, %vtep, %interface, underlay_mtu, "starting");
    let timeout = Duration::from_millis(flags.request_timeout_ms);
    if let (Some(dir), Some(token), Some(fingerprint)) =
        (&flags.tls_dir, &flags.join_token, &flags.ca_fingerprint)
        && !dir.join("cert.pem").exists()
    {
        join(&flags.controllers, &name, token, fingerprint, dir, timeout).await?;
    }
    let credentials = match (&flags.tls_dir, flags.insecure) {
        (Some(dir), false) => {
            // This agent owns the directory: a renewal a crash cut short is finished or dropped.
            weft_pki::Credentials::recover(dir).context("--tls-dir")?;
            Some(weft_pki::Credentials::load(dir).context("--tls-dir")?)
        }
        (None, true) => {
            tracing::warn!("--insecure: talking to the controllers in plaintext");
            None
        }
        (Some(_), true) => anyhow::bail!("--tls-dir and --insecure exclude each other"),
        (None, false) => anyhow::bail!(
            "give --tls-dir DIR (this host's ca.pem, cert.pem, key.pem from `weft pki issue --node NAME`), or --insecure"
        ),
    };
    let controllers =
        Controllers::new(flags.controllers.clone(), timeout, credentials.as_ref().map(|c| c.client()))?;
    if let (Some(dir), Some(credentials)) = (flags.tls_dir.clone(), credentials) {
        let (controllers, name) = (controllers.clone(), name.clone());
        let within = Duration::from_secs(flags.renew_within_days.saturating_mul(86_400));
        let period = Duration::from_millis(flags.renew_check_ms.max(100));
        let presented = credentials.cert;
        tokio::spawn(
            async move { renew_forever(&controllers, &name, &dir, presented, within, period).await },
        );
    }
    let settings = Settings {
        host: Host { name, vtep, underlay_mtu },
        state_dir: flags.state_dir.clone(),
        heartbeat: Duration::from_millis(flags.heartbeat_ms),
        resync: Duration::from_millis(flags.resync_ms),
        request_timeout: timeout,
        dns_port: flags.dns_port,
        wireguard_interface: flags.wireguard_interface.clone(),
        docker_api: flags.docker_plugin_socket.as_ref().map(|_| flags.docker_api_socket.clone()),
        service_dns: flags.docker_plugin_socket.as_ref().map(|_| flags.docker_dns_address),
    };
    let upstreams = if flags.dns_upstream.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        weft_dns::server::upstreams_from_resolv_conf(&conf)
    } else {
        flags
            .dns_upstream
            .iter()
            .map(|u| {
                u.parse::<std::net::SocketAddr>()
                    .or_else(|_| u.parse::<IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
                    .map_err(|_| anyhow::anyhow!("--dns-upstream {u:?}: expected an IP address or ip:port"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    tracing::info!(?upstreams, "DNS upstream resolvers");
    let dns = weft_dns::server::Dns::new(weft_dns::server::Settings {
        ttl: flags.dns_ttl,
        upstreams,
        upstream_timeout: Duration::from_millis(flags.dns_upstream_timeout_ms),
        max_forwards: flags.dns_max_forwards,
    });
    let tunnel = Tunnel::open(
        flags.wireguard,
        &flags.wireguard_interface,
        flags.wireguard_port,
        &flags.state_dir,
        &kernel,
    )
    .await?;
    let agent = Arc::new(Agent::new(settings, controllers, kernel, dns, tunnel)?);

    agent.register().await;
    let tasks = [
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.follow().await }
        }),
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.heartbeat().await }
        }),
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.janitor_forever().await }
        }),
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.reconcile_forever().await }
        }),
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.docker_offer_networks_forever().await }
        }),
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.docker_sweep_forever().await }
        }),
    ];
    let serve = weft_node::service::serve(agent.clone(), &flags.socket);
    let docker = async {
        match &flags.docker_plugin_socket {
            Some(socket) => weft_node::docker::server::serve(agent.clone(), socket).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = serve => result?,
        result = docker => result?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; leaving the data plane as it is"),
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}
