//! `weft-cni`: the CNI plugin binary. A runtime runs it with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; it asks the host's weft-node (its
//! attach API socket) and prints the result, or a CNI error and exits 1.

use std::io::{Read, Write};

use serde_json::{Value, json};
use weft_api::agent;
use weft_cni::{CniError, Invocation, NetConf, SUPPORTED_VERSIONS, at_least, conf, result};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let conf = NetConf::parse(&stdin);
    // Errors go out in the configuration's version when it could be read.
    let version = conf
        .as_ref()
        .ok()
        .map(|c| c.cni_version.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.0.0".into());
    let outcome = match read {
        Err(e) => Err(CniError::new(CniError::IO_FAILURE, format!("reading the configuration: {e}"))),
        Ok(_) => conf.and_then(|conf| {
            let call = Invocation::from_env(|name| std::env::var(name).ok())?;
            run(&conf, &call)
        }),
    };
    let mut stdout = std::io::stdout().lock();
    let code = match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(stdout, "{answer}");
            0
        }
        Ok(None) => 0,
        Err(error) => {
            let _ = writeln!(stdout, "{}", error.to_json(&version));
            1
        }
    };
    let _ = stdout.flush();
    std::process::exit(code);
}

fn run(conf: &NetConf, call: &Invocation) -> Result<Option<Value>, CniError> {
    if call.command == "VERSION" {
        let version = if conf.cni_version.is_empty() { "1.1.0" } else { conf.cni_version.as_str() };
        return Ok(Some(json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })));
    }
    conf.check_version()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(CniError::IO_FAILURE, format!("starting weft-cni's runtime: {e}")))?;
    runtime.block_on(async {
        match call.command.as_str() {
            "ADD" => add(conf, call).await.map(Some),
            "DEL" => del(conf, call).await.map(|()| None),
            "CHECK" => check(conf, call).await.map(|()| None),
            "STATUS" => status(conf).await.map(|()| None),
            "GC" => gc(conf).await.map(|()| None),
            "" => Err(CniError::new(CniError::INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
            other => Err(CniError::new(
                CniError::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
            )),
        }
    })
}

type Agent = agent::agent_service_client::AgentServiceClient<tonic::transport::Channel>;

async fn connect(conf: &NetConf) -> Result<Agent, CniError> {
    let socket = conf.socket();
    weft_api::agent_client::connect(&socket).await.map_err(|e| {
        CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("weft-node does not answer on {}: {e}", socket.display()),
        )
    })
}

/// Whether an attachment is this configuration's network's.
fn on_network(attachment: &agent::Attachment, network: &str) -> bool {
    attachment.network_name == network || attachment.network_id.starts_with(network)
}

async fn add(conf: &NetConf, call: &Invocation) -> Result<Value, CniError> {
    call.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let request = conf::attach_request(conf, call)?;
    let mut agent = connect(conf).await?;
    let attachment = match agent.attach(request).await {
        Ok(answer) => answer.into_inner().attachment.unwrap_or_default(),
        // An ADD repeated (a runtime retrying after a timeout) answers what the first did.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let listed =
                agent.list(agent::ListRequest::default()).await.map_err(|s| CniError::from_status(&s))?;
            listed
                .into_inner()
                .attachments
                .into_iter()
                .find(|a| {
                    a.container_id == call.container_id
                        && on_network(a, conf.weft_network())
                        && a.netns == call.netns
                        && a.interface == call.ifname
                })
                .ok_or_else(|| CniError::from_status(&status))?
        }
        Err(status) => return Err(CniError::from_status(&status)),
    };
    Ok(result::add_result(&conf.cni_version, &attachment, conf.prev_result.as_ref()))
}

/// Idempotent: a container already detached (or never attached) is no error.
async fn del(conf: &NetConf, call: &Invocation) -> Result<(), CniError> {
    call.require(&["CNI_CONTAINERID"])?;
    let mut agent = connect(conf).await?;
    let request = agent::DetachRequest {
        network: conf.weft_network().to_string(),
        container_id: call.container_id.clone(),
    };
    match agent.detach(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(CniError::from_status(&status)),
    }
}

async fn check(conf: &NetConf, call: &Invocation) -> Result<(), CniError> {
    if !at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!("CHECK is not part of CNI {}: it came with 0.4.0", conf.cni_version),
        ));
    }
    call.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_NETWORK_CONFIG,
            "CHECK needs the prevResult the runtime kept from ADD",
        )
    })?;
    let mut agent = connect(conf).await?;
    let request = agent::CheckRequest {
        network: conf.weft_network().to_string(),
        container_id: call.container_id.clone(),
        netns: call.netns.clone(),
        interface: call.ifname.clone(),
    };
    let attachment = agent
        .check(request)
        .await
        .map_err(|s| CniError::from_status(&s))?
        .into_inner()
        .attachment
        .unwrap_or_default();
    result::check_prev_result(prev, &attachment)
}

/// CNI 1.1 STATUS: ready when weft-node answers.
async fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_available = |e: CniError| CniError::new(CniError::NOT_AVAILABLE, e.msg);
    let mut agent = connect(conf).await.map_err(not_available)?;
    agent
        .list(agent::ListRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| not_available(CniError::from_status(&s)))
}

/// CNI 1.1 GC: releases this network's attachments made through CNI whose container the
/// runtime no longer has. Attachments of other front-ends (the CLI, Docker) are not ours.
async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let mut agent = connect(conf).await?;
    let listed = agent.list(agent::ListRequest::default()).await.map_err(|s| CniError::from_status(&s))?;
    let valid: Vec<&str> = conf.valid_attachments.iter().map(|v| v.container_id.as_str()).collect();
    let mut failures = Vec::new();
    for stale in listed.into_inner().attachments.into_iter().filter(|a| {
        a.front_end == "cni"
            && on_network(a, conf.weft_network())
            && !valid.contains(&a.container_id.as_str())
    }) {
        let request =
            agent::DetachRequest { network: stale.network_id.clone(), container_id: stale.container_id };
        if let Err(status) = agent.detach(request).await
            && status.code() != tonic::Code::NotFound
        {
            failures.push(status.message().to_string());
        }
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(CniError::new(CniError::TRY_AGAIN_LATER, failures.join("; "))),
    }
}
