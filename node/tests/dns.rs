//! Container names across hosts with `dig` from container namespaces: names, aliases,
//! name.network, PTR, round robin, scoping, removal, TCP for large answers, and forwarding to
//! a stub upstream (with a dead one first) inside the lab. Needs root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::time::{Duration, Instant};

use lab::*;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_testbed::{Netns, root_or_skip};

/// `dig +short` through the container's resolv.conf; one line per answer.
fn dig(from: &Netns, args: &[&str]) -> Vec<String> {
    let mut full = vec!["dig", "+short", "+tries=1", "+time=2"];
    full.extend_from_slice(args);
    from.exec(&full).lines().map(str::to_string).filter(|l| !l.starts_with(';')).collect()
}

fn status(from: &Netns, name: &str) -> String {
    let out = from.exec(&["dig", "+tries=1", "+time=2", name]);
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("none").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_resolve_each_other_by_name_across_hosts() {
    if !root_or_skip("containers_resolve_each_other_by_name_across_hosts") {
        return;
    }
    let lab = Lab::new(2);
    let upstream = lab.stub_upstream();
    lab.create_network("blue", false);
    lab.create_network("red", false);
    let (c1, c2, c3, r1) = (Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    let mut request = attach_request(&c1, "blue", "web");
    request.write_resolv_conf = true;
    let web = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    assert_eq!(web.dns_servers, vec![web.ipv4_gateway.clone()]);
    assert_eq!(web.dns_search, vec!["blue".to_string()]);
    let mut request = attach_request(&c2, "blue", "db");
    request.aliases = vec!["api".into()];
    let db = h2.attach(request).await.unwrap().into_inner().attachment.unwrap();
    let mut request = attach_request(&c3, "blue", "db2");
    request.aliases = vec!["api".into()];
    request.wait_everywhere = true;
    let db2 = h2.attach(request).await.unwrap().into_inner().attachment.unwrap();
    attach(&mut h2, &r1, "red", "cache").await;
    let resolv = c1.exec(&["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {}", web.ipv4_gateway)), "{resolv}");

    // Names of containers on another host, aliases, name.network, reverse.
    assert_eq!(dig(&c1, &["db"]), vec![ip_of(&db)]);
    assert_eq!(dig(&c1, &["DB.blue"]), vec![ip_of(&db)]);
    let mut api = dig(&c1, &["api"]);
    api.sort();
    let mut expected = vec![ip_of(&db), ip_of(&db2)];
    expected.sort();
    assert_eq!(api, expected);
    assert_eq!(dig(&c1, &["-x", &ip_of(&db)]), vec!["db.blue.".to_string()]);
    // `ping db` works through the resolv.conf weft wrote.
    assert!(c1.pings("db"), "ping by name");

    // Round robin: the first address changes between queries.
    let firsts: std::collections::BTreeSet<String> =
        (0..12).filter_map(|_| dig(&c1, &["api"]).into_iter().next()).collect();
    assert_eq!(firsts.len(), 2, "{firsts:?}");

    // Scoping: red's container is invisible from blue, and not asked upstream.
    let before = upstream.queries.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(status(&c1, "cache"), "NXDOMAIN");
    assert_eq!(status(&c1, "cache.red"), "NXDOMAIN");
    assert_eq!(upstream.queries.load(std::sync::atomic::Ordering::Relaxed), before);

    // Other names go upstream: the dead resolver first, then the stub; local names do not
    // wait on either.
    assert_eq!(dig(&c1, &[OUTSIDE_NAME]), vec![OUTSIDE_NAME_ADDRESS.to_string()]);
    assert_eq!(status(&c1, "nothing.example"), "NXDOMAIN");
    let began = Instant::now();
    assert_eq!(dig(&c1, &["db"]), vec![ip_of(&db)]);
    assert!(began.elapsed() < Duration::from_millis(250), "local answer took {:?}", began.elapsed());

    // A large answer: truncated over UDP, whole over TCP (dig retries by itself).
    let gateway = web.ipv4_gateway.clone();
    lab.with_controller(move |channel| {
        Box::pin(async move {
            let mut client = EndpointServiceClient::new(channel);
            for k in 0..40 {
                let request = pb::CreateEndpointRequest {
                    network: "blue".into(),
                    node: "h2".into(),
                    container_id: format!("crowd{k}"),
                    container_name: format!("crowd{k}"),
                    aliases: vec!["crowd".into()],
                    ..Default::default()
                };
                client.create_endpoint(request).await.unwrap();
            }
        })
    });
    eventually("40 crowd addresses over TCP", Duration::from_secs(5), || dig(&c1, &["crowd"]).len() == 40)
        .await;
    let udp_only = c1.exec(&["dig", "+ignore", "+tries=1", &format!("@{gateway}"), "crowd"]);
    assert!(udp_only.contains(" tc "), "expected a truncated UDP answer: {udp_only}");

    // A removed container stops resolving (the watch brings the removal to h1).
    h2.detach(weft_api::agent::DetachRequest {
        network: "blue".into(),
        container_id: db.container_id.clone(),
    })
    .await
    .unwrap();
    eventually("db gone from DNS", Duration::from_secs(5), || status(&c1, "db") == "NXDOMAIN").await;

    // Leaving its last network removes the resolv.conf weft wrote for the container.
    let resolv_conf = format!("/etc/netns/{}/resolv.conf", c1.name);
    assert!(std::path::Path::new(&resolv_conf).exists());
    h1.detach(weft_api::agent::DetachRequest {
        network: "blue".into(),
        container_id: web.container_id.clone(),
    })
    .await
    .unwrap();
    assert!(!std::path::Path::new(&resolv_conf).exists(), "{resolv_conf} left behind");
}

/// Names told after the address (the Docker plugin's path): a renamed network and an updated
/// endpoint resolve by their new names on every host, and the old names are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_given_after_the_address_resolve_on_every_host() {
    if !root_or_skip("names_given_after_the_address_resolve_on_every_host") {
        return;
    }
    let lab = Lab::new(2);
    lab.create_network("docker-4a1b", false);
    lab.networks(|mut client| {
        Box::pin(async move {
            client
                .rename_network(pb::RenameNetworkRequest {
                    network: "docker-4a1b".into(),
                    name: "app".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        })
    });
    let (asker, named) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    let mut request = attach_request(&asker, "app", "asker");
    request.write_resolv_conf = true;
    let asking = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    assert_eq!(asking.dns_search, vec!["app".to_string()], "the search domain is the new name");
    let reservation = h2.attach(attach_request(&named, "app", "reservation-7")).await.unwrap().into_inner();
    let reservation = reservation.attachment.unwrap();
    assert_eq!(dig(&asker, &["reservation-7"]), vec![ip_of(&reservation)]);

    let endpoint_id = reservation.endpoint_id.clone();
    lab.with_controller(move |channel| {
        Box::pin(async move {
            EndpointServiceClient::new(channel)
                .update_endpoint(pb::UpdateEndpointRequest {
                    target: Some(pb::update_endpoint_request::Target::EndpointId(endpoint_id)),
                    container_name: "web".into(),
                    aliases: vec!["api".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
        })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while dig(&asker, &["web"]) != vec![ip_of(&reservation)] {
        assert!(Instant::now() < deadline, "the new name did not resolve on h1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dig(&asker, &["api.app"]), vec![ip_of(&reservation)]);
    assert_eq!(status(&asker, "reservation-7"), "NXDOMAIN", "the provisional name is gone");
}
