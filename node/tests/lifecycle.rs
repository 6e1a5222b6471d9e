//! The attach lifecycle as container runtimes drive it: many attaches and detaches at once
//! while the controllers fail over, containers that vanish without a detach (with the agent
//! running and while it is down), an agent killed in the middle of attaching, and one endpoint
//! that cannot be programmed. Real agents, controllers and namespaces; needs root and skips
//! loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lab::*;
use tonic::Code;
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_testbed::{Netns, root_or_skip};

/// Every endpoint in the registry, by container id.
fn registry(lab: &Lab) -> BTreeMap<String, pb::Endpoint> {
    lab.with_controller(|channel| {
        Box::pin(async move {
            let list = EndpointServiceClient::new(channel)
                .list_endpoints(pb::ListEndpointsRequest::default())
                .await
                .unwrap()
                .into_inner();
            list.endpoints.into_iter().map(|e| (e.container_id.clone(), e)).collect()
        })
    })
}

/// The index of the controller that leads now.
fn leader(lab: &Lab) -> usize {
    lab.with_controller(|channel| {
        Box::pin(async move {
            let status = ClusterServiceClient::new(channel).status(pb::StatusRequest {}).await.unwrap();
            usize::try_from(status.into_inner().leader_id).unwrap() - 1
        })
    })
}

/// The container's global IPv4 addresses, as `ip` shows them inside its namespace.
fn addresses(container: &str) -> Vec<String> {
    let out = weft_testbed::run("ip", &["-n", container, "-o", "-4", "addr", "show", "scope", "global"]);
    out.lines().filter_map(|l| l.split_whitespace().nth(3)).map(str::to_string).collect()
}

/// The links in a namespace other than loopback.
fn links(container: &str) -> Vec<String> {
    let out = weft_testbed::run("ip", &["-n", container, "-o", "link"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// weft's container veths on a host (their host ends, in its switch namespace; not the
/// gateways' ports).
fn host_veths(host: &Netns) -> usize {
    let links = host.switch_try_exec(&["ip", "-o", "link"]);
    String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.contains(": weftp") && !l.contains(": weftpg"))
        .count()
}

/// FDB entries pointing at other hosts on a network's VXLAN device.
fn fdb_macs(host: &Netns, vni: u32) -> BTreeSet<String> {
    let out = host.switch_try_exec(&["bridge", "fdb", "show", "dev", &format!("weftx{vni}")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" dst "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Every host's kernel matches the registry: one veth per local endpoint and an FDB entry for
/// every endpoint elsewhere, nothing more.
async fn kernels_match_registry(lab: &Lab, vni: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let endpoints = registry(lab);
        let mut mismatch = Vec::new();
        for host in &lab.hosts {
            let local = endpoints.values().filter(|e| e.node == host.name).count();
            let remote: BTreeSet<String> =
                endpoints.values().filter(|e| e.node != host.name).map(|e| e.mac_address.clone()).collect();
            let veths = host_veths(&host.ns);
            let fdb = if local == 0 { remote.clone() } else { fdb_macs(&host.ns, vni) };
            if veths != local || fdb != remote {
                mismatch.push(format!(
                    "{}: {veths} veths for {local} endpoints, {} FDB entries for {} remote",
                    host.name,
                    fdb.len(),
                    remote.len()
                ));
            }
        }
        if mismatch.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "kernels do not match the registry: {mismatch:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A container that can ask weft's DNS (its resolv.conf points at it).
async fn probe(lab: &Lab, host: usize, network: &str) -> (Netns, agent::Attachment) {
    let ns = Netns::new("c");
    let mut request = attach_request(&ns, network, &format!("probe{host}"));
    request.write_resolv_conf = true;
    let attachment = lab.agent(host).await.attach(request).await.unwrap().into_inner().attachment.unwrap();
    (ns, attachment)
}

fn resolves(from: &Netns, name: &str) -> Vec<String> {
    from.exec(&["dig", "+short", "+tries=2", "+time=1", name])
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// A hundred containers attached and detached at once across three hosts while the leader
/// is killed: every success is plumbed, registered and resolvable from another host; every
/// failure leaves nothing; no address is handed out twice; the kernels match the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_attaches_and_detaches_survive_a_leader_kill() {
    if !root_or_skip("a_hundred_concurrent_attaches_and_detaches_survive_a_leader_kill") {
        return;
    }
    let mut lab = Lab::new(3);
    let network = lab.create_network("busy", false);
    let probes = [probe(&lab, 0, "busy").await, probe(&lab, 1, "busy").await];
    let containers: Vec<Netns> = (0..100).map(|_| Netns::new("c")).collect();
    let clients = [lab.agent(0).await, lab.agent(1).await, lab.agent(2).await];

    let tasks: Vec<_> = containers
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut client = clients[i % 3].clone();
            let request = attach_request(ns, "busy", &format!("w{i}"));
            let detach_after = i % 4 == 0;
            tokio::spawn(async move {
                let attached = client.attach(request.clone()).await;
                let detached = match (&attached, detach_after) {
                    (Ok(_), true) => Some(
                        client
                            .detach(agent::DetachRequest {
                                network: "busy".into(),
                                container_id: request.container_id.clone(),
                            })
                            .await,
                    ),
                    _ => None,
                };
                (attached, detached)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = tokio::task::block_in_place(|| leader(&lab));
    lab.stop_controller(killed);
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    lab.start_controller(killed);

    let endpoints = registry(&lab);
    let mut attached = 0;
    let mut failed = Vec::new();
    for (i, (ns, (attach, detach))) in containers.iter().zip(&outcomes).enumerate() {
        let container_id = format!("w{i}-{}", ns.name);
        let detached_ok = matches!(detach, Some(Ok(_)));
        match attach {
            Ok(reply) if !detached_ok => {
                attached += 1;
                let a = reply.get_ref().attachment.as_ref().unwrap();
                assert_eq!(addresses(&ns.name), vec![a.ipv4_address.clone()], "container w{i}");
                let route = weft_testbed::run("ip", &["-n", &ns.name, "route", "show", "default"]);
                assert!(route.contains(&a.ipv4_gateway), "container w{i} has no default route: {route}");
                let registered =
                    endpoints.get(&container_id).unwrap_or_else(|| panic!("w{i} not registered"));
                assert_eq!(registered.ipv4_address, a.ipv4_address);
                assert_eq!(registered.node, lab.hosts[i % 3].name);
            }
            _ => {
                if let Err(status) = attach {
                    failed.push(format!("w{i}: {status}"));
                }
                assert!(
                    links(&ns.name).is_empty(),
                    "w{i} failed or was detached but kept {:?}",
                    links(&ns.name)
                );
                assert!(
                    !endpoints.contains_key(&container_id),
                    "w{i} failed or was detached but is registered"
                );
            }
        }
    }
    assert!(attached >= 50, "only {attached} of 75 attaches held: {failed:?}");
    let mut seen = BTreeSet::new();
    for e in endpoints.values() {
        assert!(seen.insert(e.ipv4_address.clone()), "{} handed out twice", e.ipv4_address);
    }
    // Every attached container's name answers from a host it is not on.
    for (i, ns) in containers.iter().enumerate() {
        let Some(e) = endpoints.get(&format!("w{i}-{}", ns.name)) else { continue };
        let (asker, _) = if e.node == lab.hosts[0].name { &probes[1] } else { &probes[0] };
        let ip = e.ipv4_address.split('/').next().unwrap().to_string();
        let name = format!("w{i}");
        eventually(&format!("{name} resolvable"), Duration::from_secs(5), || {
            resolves(asker, &name) == [ip.clone()]
        })
        .await;
    }
    kernels_match_registry(&lab, network.vni).await;
    eprintln!("{attached} attached, {} failed during the failover: {failed:?}", failed.len());
}

/// A container whose namespace is deleted without a detach is released within a resync:
/// other hosts drop it, its name stops answering, `--wait` keeps working for others, and a
/// new namespace at the same path gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_container_is_released_and_a_new_namespace_at_its_path_stays_empty() {
    if !root_or_skip("a_vanished_container_is_released_and_a_new_namespace_at_its_path_stays_empty") {
        return;
    }
    let lab = Lab::new(3);
    let network = lab.create_network("n", false);
    let (asker, _) = probe(&lab, 1, "n").await;
    let victim = Netns::new("c");
    let mut request = attach_request(&victim, "n", "victim");
    request.write_resolv_conf = true;
    let mut h1 = lab.agent(0).await;
    let attached = h1.attach(request.clone()).await.unwrap().into_inner().attachment.unwrap();
    assert_eq!(resolves(&asker, "victim"), vec![ip_of(&attached)]);
    let mac = attached.mac_address.clone();
    eventually("h2 has the victim's FDB entry", Duration::from_secs(5), || {
        fdb_macs(&lab.hosts[1].ns, network.vni).contains(&mac)
    })
    .await;

    weft_testbed::run("ip", &["netns", "del", &victim.name]);
    let began = Instant::now();
    eventually("the endpoint is released", Duration::from_secs(5), || {
        !registry(&lab).values().any(|e| e.container_name == "victim")
    })
    .await;
    let released_after = began.elapsed();
    eventually("h2 drops the victim's FDB entry", Duration::from_secs(5), || {
        !fdb_macs(&lab.hosts[1].ns, network.vni).contains(&mac)
    })
    .await;
    // The pass that drops the FDB entry swaps the DNS table a moment later (after WireGuard).
    eventually("the victim's name stops answering on h2", Duration::from_secs(5), || {
        resolves(&asker, "victim").is_empty()
    })
    .await;
    // h1 tidies up after the controllers answer its release, which races h2's watch: what
    // h1 owns goes within the same bound, not necessarily before h2 has moved on.
    let resolv_conf_dir = format!("/etc/netns/{}", victim.name);
    eventually("h1 removes the victim's resolv.conf dir", Duration::from_secs(5), || {
        !std::path::Path::new(&resolv_conf_dir).exists()
    })
    .await;
    eventually("h1 removes the victim's veth", Duration::from_secs(5), || host_veths(&lab.hosts[0].ns) == 0)
        .await;

    // Another container elsewhere attaches with the applied-everywhere wait: h1 is not held up.
    let other = Netns::new("c");
    let mut wait = attach_request(&other, "n", "other");
    wait.wait_everywhere = true;
    lab.agent(2).await.attach(wait).await.unwrap();

    // A new namespace at the same path: a few resyncs later it still has nothing.
    weft_testbed::run("ip", &["netns", "add", &victim.name]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(links(&victim.name).is_empty(), "the new namespace inherited {:?}", links(&victim.name));
    // The same container id attaches afresh there.
    let again = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    assert_eq!(addresses(&victim.name), vec![again.ipv4_address.clone()]);
    assert!(released_after < Duration::from_secs(3), "released after {released_after:?} (resync 500 ms)");
}

/// The same, with the agent down while the namespace is deleted and a new one made at the
/// same path (which may even reuse the old namespace's inode): the restarted agent releases
/// the container, leaves the new namespace alone, and keeps its other containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_vanished_while_the_agent_was_down_is_released_at_start() {
    if !root_or_skip("a_container_that_vanished_while_the_agent_was_down_is_released_at_start") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.create_network("n", false);
    let (asker, _) = probe(&lab, 1, "n").await;
    let (victim, keeper) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    attach(&mut h1, &victim, "n", "victim").await;
    let kept = attach(&mut h1, &keeper, "n", "keeper").await;

    lab.kill_agent(0);
    weft_testbed::run("ip", &["netns", "del", &victim.name]);
    weft_testbed::run("ip", &["netns", "add", &victim.name]);
    lab.start_agent(0);
    let mut h1 = lab.agent(0).await;
    eventually("the endpoint is released", Duration::from_secs(10), || {
        !registry(&lab).values().any(|e| e.container_name == "victim")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(links(&victim.name).is_empty(), "the new namespace inherited {:?}", links(&victim.name));
    let listed = h1.list(agent::ListRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = listed.attachments.iter().map(|a| a.container_name.as_str()).collect();
    assert_eq!(names, ["keeper"]);
    assert!(reaches(&asker, &ip_of(&kept)).await, "the kept container lost its network");
}

/// An agent killed while attaches are in flight: when it is back, every container is either
/// attached everywhere (kernel, registry, the agent's list) or nowhere, and every attach that
/// had returned success is among the attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_attach_leaves_nothing_half_done() {
    if !root_or_skip("an_agent_killed_mid_attach_leaves_nothing_half_done") {
        return;
    }
    let mut lab = Lab::new(2);
    let network = lab.create_network("n", false);
    let containers: Vec<Netns> = (0..24).map(|_| Netns::new("c")).collect();
    let client = lab.agent(0).await;
    let tasks = attach_all(&client, &containers, "n", "k");
    tokio::time::sleep(Duration::from_millis(150)).await;
    lab.kill_agent(0);
    let mut succeeded = Vec::new();
    for task in tasks {
        succeeded.push(task.await.unwrap().is_ok());
    }
    lab.start_agent(0);
    let mut h1 = lab.agent(0).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let endpoints = registry(&lab);
        let listed: BTreeSet<String> = h1
            .list(agent::ListRequest {})
            .await
            .unwrap()
            .into_inner()
            .attachments
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        let mut problems = Vec::new();
        for (i, ns) in containers.iter().enumerate() {
            let id = format!("k{i}-{}", ns.name);
            let plumbed = !addresses(&ns.name).is_empty();
            let registered = endpoints.contains_key(&id);
            let listed = listed.contains(&id);
            if succeeded[i] && !(plumbed && registered && listed) {
                problems.push(format!(
                    "k{i} succeeded but plumbed={plumbed} registered={registered} listed={listed}"
                ));
            }
            if !(plumbed == registered && registered == listed) {
                problems.push(format!(
                    "k{i} half done: plumbed={plumbed} registered={registered} listed={listed}"
                ));
            }
        }
        if problems.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "after the restart: {problems:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kernels_match_registry(&lab, network.vni).await;
    let leftovers = std::fs::read_dir(lab.hosts[0].state.join("attachments")).unwrap().count();
    assert_eq!(leftovers, registry(&lab).len(), "one record per attached container");
}

/// A runtime attaches a container while no controller can be reached: the attach fails as
/// Unavailable, and what it began cannot be undone yet either. The runtime retries, as
/// runtimes do: while the controllers are still away it is told Unavailable again, never that
/// the container is already attached; once they are back the retry attaches it, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_that_failed_while_the_controllers_were_away_succeeds_when_retried() {
    if !root_or_skip("an_attach_that_failed_while_the_controllers_were_away_succeeds_when_retried") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.create_network("n", false);
    let mut h1 = lab.agent(0).await;
    for i in 0..3 {
        lab.stop_controller(i);
    }
    let container = Netns::new("c");
    let request = attach_request(&container, "n", "retried");
    let refused = h1.attach(request.clone()).await.expect_err("no controller to register with");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    for _ in 0..3 {
        let again = h1.attach(request.clone()).await.expect_err("no controller to register with");
        // Aborted while the agent is in the middle of undoing the first try.
        assert!(matches!(again.code(), Code::Unavailable | Code::Aborted), "a retry while away: {again:?}");
    }

    for i in 0..3 {
        lab.start_controller(i);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let attached = loop {
        match h1.attach(request.clone()).await {
            Ok(answer) => break answer.into_inner().attachment.unwrap(),
            Err(status) => {
                assert!(Instant::now() < deadline, "the retry never attached: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(addresses(&container.name), vec![attached.ipv4_address.clone()]);
    let registered: Vec<_> =
        registry(&lab).into_values().filter(|e| e.container_id == request.container_id).collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0].ipv4_address, attached.ipv4_address);
}

/// A runtime that retries before its first call has answered sends the same attach again
/// and again: eight at once for one container. One attaches it; each other is told the
/// container is busy (Aborted, retry) or already attached, and the container ends up with one
/// interface and one endpoint. Eight detaches at once then leave it with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_container_attached_and_detached_eight_times_at_once_ends_up_once() {
    if !root_or_skip("one_container_attached_and_detached_eight_times_at_once_ends_up_once") {
        return;
    }
    let lab = Lab::new(1);
    lab.create_network("n", false);
    let h1 = lab.agent(0).await;
    let container = Netns::new("c");
    let request = attach_request(&container, "n", "eager");
    let attaches: Vec<_> = (0..8)
        .map(|_| {
            let (mut client, request) = (h1.clone(), request.clone());
            tokio::spawn(async move { client.attach(request).await })
        })
        .collect();
    let mut attached = Vec::new();
    for task in attaches {
        match task.await.unwrap() {
            Ok(answer) => attached.push(answer.into_inner().attachment.unwrap()),
            Err(status) => assert!(
                matches!(status.code(), Code::Aborted | Code::AlreadyExists),
                "a repeated attach: {status:?}"
            ),
        }
    }
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(links(&container.name), vec![attached[0].interface.clone()]);
    assert_eq!(addresses(&container.name), vec![attached[0].ipv4_address.clone()]);
    let registered =
        |lab: &Lab| registry(lab).into_values().filter(|e| e.container_id == request.container_id).count();
    assert_eq!(registered(&lab), 1);

    let detaches: Vec<_> = (0..8)
        .map(|_| {
            let mut client = h1.clone();
            let detach =
                agent::DetachRequest { network: "n".into(), container_id: request.container_id.clone() };
            tokio::spawn(async move { client.detach(detach).await })
        })
        .collect();
    let mut detached = 0;
    for task in detaches {
        match task.await.unwrap() {
            Ok(_) => detached += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::Aborted | Code::NotFound),
                "a repeated detach: {status:?}"
            ),
        }
    }
    assert_eq!(detached, 1);
    assert!(links(&container.name).is_empty(), "{:?}", links(&container.name));
    assert_eq!(registered(&lab), 0);
}

/// One endpoint the host cannot program (a foreign link holds its veth's name) is reported
/// as that endpoint's state and blocks only waits for it; the rest of the host moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_endpoint_is_reported_and_holds_nobody_else_back() {
    if !root_or_skip("one_broken_endpoint_is_reported_and_holds_nobody_else_back") {
        return;
    }
    let lab = Lab::new(2);
    lab.create_network("n", false);
    let (stuck, fine, later) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    let broken = attach(&mut h1, &stuck, "n", "stuck").await;
    attach(&mut h1, &fine, "n", "fine").await;
    let veth = format!("weftp{:x}", broken.revision);
    let h1ns = &lab.hosts[0].ns;
    h1ns.switch_exec(&["ip", "link", "del", &veth]);
    h1ns.switch_exec(&["ip", "link", "add", &veth, "type", "bridge"]);

    let state = || registry(&lab).get(&broken.container_id).map(|e| e.problem.clone()).unwrap_or_default();
    eventually("the endpoint's problem is reported", Duration::from_secs(5), || state().contains(&veth))
        .await;
    // h1 still programs the rest: a container attached on h2 with --wait is confirmed by h1.
    let mut request = attach_request(&later, "n", "later");
    request.wait_everywhere = true;
    let confirmed = h2.attach(request).await.unwrap().into_inner().attachment.unwrap();
    assert!(reaches(&fine, &ip_of(&confirmed)).await);
    // The CLI shows it as the endpoint's state.
    let weft = weft_testbed::workspace_binary(NODE, "weft");
    let admin = lab.admin_tls();
    let listed = lab.hosts[0].ns.exec(&[
        weft.to_str().unwrap(),
        "--controller",
        &CONTROLLERS.join(","),
        "--tls-dir",
        admin.to_str().unwrap(),
        "endpoint",
        "ls",
        "--format",
        "{{.Name}} {{.State}}",
    ]);
    assert!(listed.contains("fine ok"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("stuck failed: ") && l.contains(&veth)), "{listed}");

    // Repaired: the foreign link goes, the container is plumbed again and the state clears.
    h1ns.switch_exec(&["ip", "link", "del", &veth]);
    eventually("the problem clears", Duration::from_secs(5), || state().is_empty()).await;
    assert_eq!(addresses(&stuck.name), vec![broken.ipv4_address.clone()]);
    let code = h1.attach(attach_request(&stuck, "n", "stuck")).await.unwrap_err().code();
    assert_eq!(code, Code::AlreadyExists);
}

/// weft makes a container's interface directly in the container's namespace under its final
/// name. A namespace that already has a link of that name (another runtime's, a leftover) is
/// refused in one clear answer naming the name and the namespace; the foreign link is left as
/// it was, no endpoint or veth stays behind, and once the name is free the same attach works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_name_the_container_already_uses_is_refused_and_nothing_stays_behind() {
    if !root_or_skip("an_interface_name_the_container_already_uses_is_refused_and_nothing_stays_behind") {
        return;
    }
    let lab = Lab::new(1);
    lab.create_network("n", false);
    let mut h1 = lab.agent(0).await;
    let container = Netns::new("c");
    container.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"]);
    let request = attach_request(&container, "n", "taken");

    let refused = h1.attach(request.clone()).await.expect_err("eth0 is taken in the container");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for named in ["already has an interface named eth0", &container.path()] {
        assert!(refused.message().contains(named), "the answer names {named:?}: {}", refused.message());
    }
    let foreign = container.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(foreign.contains("eth0@other0"), "the container's own eth0 is untouched: {foreign}");
    assert!(!registry(&lab).contains_key(&request.container_id), "no endpoint stays registered");
    assert_eq!(host_veths(&lab.hosts[0].ns), 0, "no veth stays in the switch namespace");

    container.exec(&["ip", "link", "del", "eth0"]);
    let attached = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    assert_eq!(addresses(&container.name), vec![attached.ipv4_address.clone()]);
    assert_eq!(host_veths(&lab.hosts[0].ns), 1);
}
