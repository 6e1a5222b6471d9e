//! `weft`: `docker network` for a whole weft cluster. Networks, endpoints, nodes and the
//! controller cluster through the controllers' gRPC API; connecting containers through the
//! local node agent's socket.
//!
//! # Layout
//! - `main.rs`: the command tree and dispatch;
//! - [`target`]: where the controllers and the agent are, and sending writes with retries;
//! - one module a command: [`network`], [`node`], [`endpoint`], [`cluster`], [`token`], [`pki`];
//! - [`output`]: tables, templates and inspect documents (pure), [`show`] writes them;
//! - [`failure`]: the one-line error a command ends with.

mod cluster;
mod endpoint;
mod failure;
mod network;
mod node;
mod output;
mod pki;
mod show;
mod target;
mod token;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::failure::Result;
use crate::target::{Connection, Target};

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage networks (create, ls, inspect, rm, prune, connect, disconnect).
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// The hosts in the cluster.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Container interfaces on every host.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// The controller cluster: status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Join tokens: how a new host (or controller) gets its credential.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The cluster's certificates: a CA and credentials for controllers, admins and hosts.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

async fn run(cli: Cli) -> Result<()> {
    // Commands that reach no controller or agent need no connection settings, so a broken
    // WEFT_TLS_DIR or config file cannot stop `weft pki init` or `weft completion`.
    let command = match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            return Ok(());
        }
        Command::Pki(command) => return pki::run(command),
        other => other,
    };
    let target = Target::resolve(&cli.connection)?;
    match command {
        Command::Network(command) => network::run(&target, command).await,
        Command::Node(command) => node::run(&target, command).await,
        Command::Endpoint(command) => endpoint::run(&target, command).await,
        Command::Cluster(command) => cluster::run(&target, command).await,
        Command::Token(command) => token::run(&target, command).await,
        Command::Completion { .. } | Command::Pki(_) => Ok(()),
    }
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
