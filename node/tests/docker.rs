//! weft as Docker's network and IPAM driver, with the real dockerd from Debian: every host a
//! network namespace with a mount namespace of its own, where its dockerd and its weft-node
//! (serving `/run/docker/plugins/weft.sock`) both run, as on a real machine. Containers are
//! busybox-static imported as an image. Needs root and docker.io; skips loudly without either.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::time::{Duration, Instant};

use lab::dockerd::{DockerLab, Dockerd, IMAGE, address_in};
use lab::*;
use weft_api::pb;

/// Runs a busybox container detached: `docker run -d --name NAME ARGS… IMAGE sleep 1000`.
fn start(dockerd: &Dockerd, name: &str, args: &[&str]) {
    let mut all = vec!["run", "-d", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, "sleep", "1000"]);
    dockerd.run(&all);
}

/// Waits until `container` (on `dockerd`) pings `target` (an address or a name).
async fn pings(dockerd: &Dockerd, container: &str, target: &str) {
    eventually(&format!("{container} pings {target}"), Duration::from_secs(15), || {
        dockerd.try_run(&["exec", container, "ping", "-c", "1", "-W", "1", target]).status.success()
    })
    .await;
}

/// Waits until `name`, asked through the container's own resolver (Docker's 127.0.0.11),
/// answers `ip`.
async fn resolves(dockerd: &Dockerd, container: &str, name: &str, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = dockerd.try_run(&["exec", container, "nslookup", name]);
        let text = String::from_utf8_lossy(&answer.stdout).into_owned();
        if text.contains(ip) {
            return;
        }
        assert!(Instant::now() < deadline, "{container} resolves {name} not to {ip}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the registry has, or no longer has, an endpoint at `ip`.
async fn registration(docker: &DockerLab, ip: &str, wanted: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while docker.registered(ip) != wanted {
        assert!(
            Instant::now() < deadline,
            "{ip} is {} registered after {within:?}",
            if wanted { "not" } else { "still" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_on_three_hosts_share_a_weft_network() {
    let Some(docker) = DockerLab::new("docker_containers_on_three_hosts_share_a_weft_network", 3).await
    else {
        return;
    };
    let lab = &docker.lab;
    let [d1, d2, d3] = [&docker.dockerds[0], &docker.dockerds[1], &docker.dockerds[2]];

    // Created through Docker on h1: a weft network with a cluster-unique subnet, which every
    // other host's agent creates in its own dockerd (so --ip works there).
    docker.create_network(0, "app", &[]).await;
    let pool = d1.run(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "app"]);
    for other in [d2, d3] {
        assert_eq!(
            other.run(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "app"]),
            pool
        );
    }
    // Docker tells a plugin no name; the agent asks dockerd and names the weft network so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = lab.networks(move |mut client| {
            Box::pin(async move {
                client.list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner().networks
            })
        });
        let ours = listed.iter().find(|n| n.ipam_config.iter().any(|c| c.subnet == pool)).unwrap();
        if ours.name == "app" {
            break;
        }
        assert!(Instant::now() < deadline, "the weft network is still named {:?}", ours.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Creating it again on another host meets Docker's own refusal.
    let again = docker.create_network_refused(1, "app", &[]);
    assert!(again.contains("already exists"), "{again}");

    start(d1, "alpha", &["--network", "app"]);
    start(d2, "bravo", &["--network", "app", "--network-alias", "api"]);
    let (a_ip, b_ip) = (address_in(d1, "alpha", "app"), address_in(d2, "bravo", "app"));
    assert_ne!(a_ip, b_ip);
    pings(d1, "alpha", &b_ip).await;
    pings(d2, "bravo", &a_ip).await;
    let registered = lab.endpoints();
    let on = |ip: &str| {
        registered.iter().find(|e| e.ipv4_address.starts_with(&format!("{ip}/"))).map(|e| e.node.clone())
    };
    assert_eq!((on(&a_ip).as_deref(), on(&b_ip).as_deref()), (Some("h1"), Some("h2")), "{registered:?}");

    // Names and aliases, through Docker's own resolver as the container is set up: 127.0.0.11
    // does not know a container of another host and forwards to weft, which does.
    assert!(d1.run(&["exec", "alpha", "cat", "/etc/resolv.conf"]).contains("127.0.0.11"));
    for name in ["bravo", "api", "bravo.app"] {
        resolves(d1, "alpha", name, &b_ip).await;
    }
    pings(d1, "alpha", "api").await;
    // A third host, by name, both ways; a container started with an image's shell command.
    d3.run(&["run", "--rm", "--network", "app", IMAGE, "ping", "-c", "1", "-W", "2", "bravo"]);
    start(d3, "charlie", &["--network", "app"]);
    pings(d3, "charlie", "alpha").await;
    pings(d1, "alpha", "charlie").await;

    // weft shows Docker's containers like any other: host and name.
    eventually("charlie in the registry, on h3", Duration::from_secs(10), || {
        lab.endpoints().iter().any(|e| e.container_name == "charlie" && e.node == "h3")
    })
    .await;

    // An address another host holds is refused, which Docker alone would not do.
    let refused =
        d2.fails(&["run", "-d", "--name", "dup", "--network", "app", "--ip", &a_ip, IMAGE, "sleep", "1"]);
    assert!(refused.contains("remote:") && refused.contains(&a_ip), "{refused}");
    let free_ip = format!("{}.200", a_ip.rsplit_once('.').unwrap().0);
    start(d2, "delta", &["--network", "app", "--ip", &free_ip, "--mac-address", "02:42:0a:99:00:c8"]);
    pings(d1, "alpha", &free_ip).await;
    let mac = d2.run(&["inspect", "-f", "{{(index .NetworkSettings.Networks \"app\").MacAddress}}", "delta"]);
    assert_eq!(mac, "02:42:0a:99:00:c8");

    // Stopped, its address is released everywhere; started again, reachable by name again.
    d2.run(&["stop", "-t", "0", "bravo"]);
    registration(&docker, &b_ip, false, Duration::from_secs(10)).await;
    d2.run(&["start", "bravo"]);
    let b_ip = address_in(d2, "bravo", "app");
    resolves(d1, "alpha", "bravo", &b_ip).await;
    pings(d1, "alpha", "bravo").await;

    // Removing a container releases its address everywhere.
    d1.run(&["rm", "-f", "alpha"]);
    registration(&docker, &a_ip, false, Duration::from_secs(10)).await;
}

/// What Docker does not tell a plugin, and restarts of everything: the agent killed while a
/// container is removed (Docker drops the endpoint after its retries), the agent restarted
/// under running containers, dockerd restarted with a `--restart always` container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_outlive_restarts_and_what_docker_forgets() {
    let Some(mut docker) =
        DockerLab::new("docker_containers_outlive_restarts_and_what_docker_forgets", 2).await
    else {
        return;
    };
    docker.create_network(0, "app", &[]).await;
    start(&docker.dockerds[0], "alpha", &["--network", "app"]);
    start(&docker.dockerds[1], "bravo", &["--network", "app", "--restart", "always"]);
    start(&docker.dockerds[1], "doomed", &["--network", "app"]);
    let (d1, d2) = (&docker.dockerds[0], &docker.dockerds[1]);
    let a_ip = address_in(d1, "alpha", "app");
    let doomed_ip = address_in(d2, "doomed", "app");
    resolves(d1, "alpha", "bravo", &address_in(d2, "bravo", "app")).await;
    pings(d1, "alpha", "bravo").await;

    // h2's agent restarted under running containers: not one ping lost meanwhile.
    let b_ip = address_in(d2, "bravo", "app");
    let ping = d1.spawn(&["exec", "alpha", "ping", "-c", "60", "-i", "0.1", "-W", "1", &b_ip]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    docker.kill_agent(1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    docker.start_agent(1).await;
    let out = tokio::task::spawn_blocking(move || ping.wait_with_output().unwrap()).await.unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains(" 0% packet loss"), "pings lost across the agent's restart: {summary}");
    let d1 = &docker.dockerds[0];
    resolves(d1, "alpha", "bravo", &b_ip).await;

    // The agent down while a container is removed: Docker retries its calls, then drops the
    // endpoint without the plugin. Once back, the agent finds Docker no longer has it and
    // releases the address (and its interface).
    docker.kill_agent(1);
    let d2 = &docker.dockerds[1];
    let _ = d2.try_run(&["rm", "-f", "doomed"]);
    assert!(!d2.try_run(&["inspect", "doomed"]).status.success(), "doomed is still there");
    assert!(docker.registered(&doomed_ip), "the registry lost {doomed_ip} without the plugin");
    docker.start_agent(1).await;
    registration(&docker, &doomed_ip, false, Duration::from_secs(60)).await;
    let (d1, d2) = (&docker.dockerds[0], &docker.dockerds[1]);
    assert!(!d1.try_run(&["exec", "alpha", "ping", "-c", "1", "-W", "1", &doomed_ip]).status.success());
    // ...and hands it out again.
    start(d2, "reborn", &["--network", "app", "--ip", &doomed_ip]);
    pings(d1, "alpha", &doomed_ip).await;

    // dockerd restarted: it stops its containers (releasing their addresses through the
    // plugin) and starts `--restart always` ones again, which weft connects and names again.
    docker.dockerds[1].restart();
    let d2 = &docker.dockerds[1];
    eventually("bravo running again with dockerd", Duration::from_secs(30), || {
        d2.run(&["inspect", "-f", "{{.State.Running}}", "bravo"]) == "true"
    })
    .await;
    let b_ip = address_in(d2, "bravo", "app");
    let d1 = &docker.dockerds[0];
    resolves(d1, "alpha", "bravo", &b_ip).await;
    pings(d1, "alpha", "bravo").await;
    // "reborn" had no restart policy: its address went with it.
    assert!(d2.run(&["inspect", "-f", "{{.State.Running}}", "reborn"]) == "false");
    registration(&docker, &doomed_ip, false, Duration::from_secs(10)).await;
    assert!(docker.registered(&a_ip));
}

/// What Docker networks on weft have, through Docker: `--internal` and `-o encrypted` given
/// to `docker network create` reach weft (and the other hosts' dockerd); networks stay
/// apart; `docker network connect`/`disconnect`; `docker network rm` on one host while
/// another uses the network; `weft network rm` takes it from every dockerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_networks_keep_their_options_and_stay_apart() {
    let Some(docker) = DockerLab::new("docker_networks_keep_their_options_and_stay_apart", 2).await else {
        return;
    };
    let lab = &docker.lab;
    let (d1, d2) = (&docker.dockerds[0], &docker.dockerds[1]);
    docker.create_network(0, "front", &[]).await;
    docker.create_network(0, "back", &["--internal", "-o", "encrypted"]).await;
    let back = lab.networks(|mut client| {
        Box::pin(async move {
            let listed = client.list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner();
            listed.networks.into_iter().find(|n| n.name == "back")
        })
    });
    let back = back.expect("weft has network back");
    assert!(back.internal && back.encrypted, "{back:?}");
    assert_eq!(d2.run(&["network", "inspect", "-f", "{{.Internal}}", "back"]), "true");
    // Options the weft network does not have are refused where it exists already.
    let differs =
        docker.create_network_refused(1, "back-open", &["--ipam-opt", &format!("weft.network={}", back.id)]);
    assert!(differs.contains("remote:") && differs.contains("internal"), "{differs}");

    start(d1, "web", &["--network", "front"]);
    start(d2, "api", &["--network", "front"]);
    start(d2, "db", &["--network", "back"]);
    let db_ip = address_in(d2, "db", "back");
    pings(d1, "web", "api").await;
    // Apart: front's containers do not reach back's, nor resolve them.
    assert!(!d1.try_run(&["exec", "web", "ping", "-c", "1", "-W", "1", &db_ip]).status.success());
    assert!(
        !d1.try_run(&["exec", "web", "nslookup", "db"])
            .stdout
            .windows(db_ip.len())
            .any(|w| w == db_ip.as_bytes())
    );
    // Egress from front, none from the internal back.
    pings(d2, "api", OUTSIDE).await;
    assert!(!d2.try_run(&["exec", "db", "ping", "-c", "1", "-W", "1", OUTSIDE]).status.success());
    // A container only on the internal network still resolves one of another host.
    start(d1, "cache", &["--network", "back"]);
    resolves(d2, "db", "cache", &address_in(d1, "cache", "back")).await;
    pings(d2, "db", "cache").await;
    d1.run(&["rm", "-f", "cache"]);

    // Connected to back as well: web reaches db by name, across hosts, inside WireGuard.
    d1.run(&["network", "connect", "back", "web"]);
    resolves(d1, "web", "db", &db_ip).await;
    pings(d1, "web", "db").await;
    let web_back_ip = address_in(d1, "web", "back");
    assert!(docker.registered(&web_back_ip));
    d1.run(&["network", "disconnect", "back", "web"]);
    registration(&docker, &web_back_ip, false, Duration::from_secs(10)).await;
    assert!(!d1.try_run(&["exec", "web", "ping", "-c", "1", "-W", "1", &db_ip]).status.success());

    // Made now, so that the resyncs below would have offered it to Docker.
    let dual =
        lab.create(pb::CreateNetworkRequest { name: "dual".into(), enable_ipv6: true, ..Default::default() });
    // Removed from h1's dockerd while h2 uses it: only h1's Docker network goes, for good.
    d1.run(&["network", "rm", "back"]);
    tokio::time::sleep(Duration::from_secs(2)).await; // four resyncs: the agent does not bring it back
    assert!(!d1.try_run(&["network", "inspect", "back"]).status.success(), "h1's agent made back again");
    assert!(d2.run(&["network", "inspect", "-f", "{{.Name}}", "back"]) == "back");
    d2.run(&["run", "--rm", "--network", "back", IMAGE, "ping", "-c", "1", "-W", "2", &db_ip]);

    // A dual-stack network made with weft is offered to every dockerd with IPv6 and both its
    // subnets, and Docker's containers there get weft's two addresses.
    let subnets: Vec<&str> = dual.ipam_config.iter().map(|c| c.subnet.as_str()).collect();
    let inspect =
        ["network", "inspect", "-f", "{{.EnableIPv6}} {{range .IPAM.Config}}{{.Subnet}} {{end}}", "dual"];
    eventually("dual offered to h2's dockerd", Duration::from_secs(10), || {
        d2.try_run(&inspect).status.success()
    })
    .await;
    assert_eq!(d2.run(&inspect), format!("true {}", subnets.join(" ")));
    start(d2, "both", &["--network", "dual"]);
    let v6 = ipv6_in(d2, "both", "dual");
    eventually("both's two addresses in weft", Duration::from_secs(10), || {
        lab.endpoints()
            .iter()
            .any(|e| e.container_name == "both" && e.ipv6_address.starts_with(&format!("{v6}/")))
    })
    .await;
    d2.run(&["rm", "-f", "both"]);

    // Removed from weft (front, once empty): gone from every dockerd.
    d1.run(&["rm", "-f", "web"]);
    d2.run(&["rm", "-f", "api"]);
    lab.remove_network("front");
    for dockerd in [d1, d2] {
        eventually("front gone from Docker after weft network rm", Duration::from_secs(10), || {
            !dockerd.try_run(&["network", "inspect", "front"]).status.success()
        })
        .await;
    }
}

/// `docker run -p`/`-P` on weft networks: the ports reach the container from another host and
/// from the host itself, a host port held is refused, a stopped container's ports are free
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_publishes_ports_on_weft_networks() {
    let Some(docker) = DockerLab::new("docker_publishes_ports_on_weft_networks", 2).await else {
        return;
    };
    let lab = &docker.lab;
    let d1 = &docker.dockerds[0];
    docker.create_network(0, "app", &[]).await;
    let serve = |dockerd: &Dockerd, name: &str, publish: &[&str]| {
        let mut args = vec!["run", "-d", "--name", name, "--network", "app"];
        args.extend_from_slice(publish);
        args.extend_from_slice(&[IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"]);
        dockerd.run(&args);
    };
    let fetch = |from: usize, url: &str| {
        // (busybox 1.35's wget crashes with -T, hence timeout(1).)
        lab.hosts[from].ns.try_exec(&["timeout", "3", "busybox", "wget", "-q", "-O", "-", url])
    };
    serve(d1, "web", &["-p", "8080:80"]);
    let h1 = "192.168.77.1";
    let served = |from: usize, port: u32| {
        String::from_utf8_lossy(&fetch(from, &format!("http://{h1}:{port}/")).stdout)
            .contains("served by weft")
    };
    eventually("h2 reaches web through h1:8080", Duration::from_secs(15), || served(1, 8080)).await;
    assert!(String::from_utf8_lossy(&fetch(0, "http://127.0.0.1:8080/").stdout).contains("served by weft"));
    let registered = lab.endpoints();
    let web = registered.iter().find(|e| e.container_name == "web").unwrap();
    assert_eq!(web.ports.iter().map(|p| p.host_port).collect::<Vec<_>>(), vec![8080]);

    // The same host port on the same host is refused with the holder's name.
    let held = d1.fails(&[
        "run",
        "-d",
        "--name",
        "second",
        "--network",
        "app",
        "-p",
        "8080:80",
        IMAGE,
        "sleep",
        "100",
    ]);
    assert!(held.contains("remote:") && held.contains("8080") && held.contains("web"), "{held}");
    // -P: a random port of h1's, reachable from h2.
    serve(d1, "any", &["-P", "--expose", "80"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let random = loop {
        let ports = lab.endpoints().into_iter().find(|e| e.container_name == "any").map(|e| e.ports);
        if let Some(port) = ports.and_then(|p| p.first().map(|p| p.host_port)) {
            break port;
        }
        assert!(Instant::now() < deadline, "any published nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(random, 8080);
    assert!(served(1, random), "any is not reachable on h1:{random}");
    // (`docker port` shows nothing for a remote driver: dockerd reads ports only from its
    // built-in drivers. `weft endpoint ls` shows them.)

    // Stopped, web's port is free again: another container takes it.
    d1.run(&["stop", "-t", "0", "web"]);
    serve(d1, "successor", &["-p", "8080:80"]);
    eventually("h2 reaches successor through h1:8080", Duration::from_secs(15), || served(1, 8080)).await;
}

/// Dozens of `docker run` at once on two hosts, as a deploy does: every container gets its own
/// address and its own `-P` host port, and every name resolves from a container elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_starts_many_containers_at_once() {
    let Some(docker) = DockerLab::new("docker_starts_many_containers_at_once", 2).await else {
        return;
    };
    const PER_HOST: usize = 10;
    docker.create_network(0, "app", &[]).await;
    std::thread::scope(|scope| {
        for (host, dockerd) in docker.dockerds.iter().enumerate() {
            for i in 0..PER_HOST {
                scope.spawn(move || {
                    let name = format!("c{host}-{i}");
                    dockerd.run(&[
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--network",
                        "app",
                        "-P",
                        "--expose",
                        "80",
                        IMAGE,
                        "sleep",
                        "1000",
                    ]);
                });
            }
        }
    });
    let mut addresses = std::collections::BTreeSet::new();
    for (host, dockerd) in docker.dockerds.iter().enumerate() {
        for i in 0..PER_HOST {
            assert!(
                addresses.insert(address_in(dockerd, &format!("c{host}-{i}"), "app")),
                "an address twice"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoints = docker.lab.endpoints();
        let named = endpoints.iter().filter(|e| e.container_name.starts_with('c')).count();
        if named == 2 * PER_HOST {
            for node in ["h1", "h2"] {
                let ports: std::collections::BTreeSet<u32> = endpoints
                    .iter()
                    .filter(|e| e.node == node)
                    .flat_map(|e| e.ports.iter().map(|p| p.host_port))
                    .collect();
                assert_eq!(ports.len(), PER_HOST, "{node}'s -P ports are not all different: {ports:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{named} of {} containers named in weft", 2 * PER_HOST);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d1 = &docker.dockerds[0];
    for i in 0..PER_HOST {
        let name = format!("c1-{i}");
        resolves(d1, "c0-0", &name, &address_in(&docker.dockerds[1], &name, "app")).await;
    }
    pings(d1, "c0-0", "c1-9").await;
}

/// The container's IPv6 address on `network`, as Docker shows it.
fn ipv6_in(dockerd: &Dockerd, container: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").GlobalIPv6Address}}}}");
    dockerd.run(&["inspect", "-f", &format, container])
}

/// `docker network create --ipv6`: Docker asks for each container's IPv6 address in a call of
/// its own; under concurrent starts every container's two addresses are still one weft
/// endpoint's, IPv6 crosses hosts, `--ip6` is cluster-wide, and the families must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_dual_stack_networks_pair_both_addresses() {
    let Some(docker) = DockerLab::new("docker_dual_stack_networks_pair_both_addresses", 2).await else {
        return;
    };
    let [d1, d2] = [&docker.dockerds[0], &docker.dockerds[1]];
    docker
        .create_network(0, "six", &["--ipv6", "--subnet", "10.77.0.0/24", "--subnet", "fd00:77::/64"])
        .await;
    let subnets = "{{range .IPAM.Config}}{{.Subnet}} {{end}}";
    assert_eq!(d2.run(&["network", "inspect", "-f", subnets, "six"]), "10.77.0.0/24 fd00:77::/64");
    // A pool subnet when none is given.
    docker.create_network(1, "pooled", &["--ipv6"]).await;
    let pooled = d1.run(&["network", "inspect", "-f", subnets, "pooled"]);
    assert!(pooled.split_whitespace().nth(1).is_some_and(|s| s.contains(':')), "{pooled}");

    const PER_HOST: usize = 4;
    std::thread::scope(|scope| {
        for (host, dockerd) in docker.dockerds.iter().enumerate() {
            for i in 0..PER_HOST {
                scope.spawn(move || start(dockerd, &format!("s{host}-{i}"), &["--network", "six"]));
            }
        }
    });
    let registered = docker.lab.endpoints();
    for (host, dockerd) in docker.dockerds.iter().enumerate() {
        for i in 0..PER_HOST {
            let name = format!("s{host}-{i}");
            let (v4, v6) = (address_in(dockerd, &name, "six"), ipv6_in(dockerd, &name, "six"));
            let endpoint = registered
                .iter()
                .find(|e| e.ipv4_address.starts_with(&format!("{v4}/")))
                .unwrap_or_else(|| panic!("{name}'s {v4} is not registered"));
            assert_eq!(
                endpoint.ipv6_address,
                format!("{v6}/64"),
                "{name}: Docker's two addresses are two endpoints'"
            );
        }
    }
    let far = ipv6_in(d2, "s1-0", "six");
    pings(d1, "s0-0", &far).await;
    // Names answer IPv6 too, through Docker's resolver.
    resolves(d1, "s0-0", "s1-0", &far).await;

    // A static --ip6 is the cluster's: another host asking for it is refused.
    start(d2, "fixed", &["--network", "six", "--ip6", "fd00:77::99"]);
    assert_eq!(ipv6_in(d2, "fixed", "six"), "fd00:77::99");
    pings(d1, "s0-0", "fd00:77::99").await;
    let refused = d1.fails(&[
        "run",
        "-d",
        "--name",
        "dup",
        "--network",
        "six",
        "--ip6",
        "fd00:77::99",
        IMAGE,
        "sleep",
        "1",
    ]);
    assert!(refused.contains("remote:") && refused.contains("fd00:77::99"), "{refused}");

    // Removed, a container's endpoint goes with both its addresses.
    let gone = address_in(d2, "fixed", "six");
    d2.run(&["rm", "-f", "fixed"]);
    registration(&docker, &gone, false, Duration::from_secs(10)).await;
    assert!(!docker.lab.endpoints().iter().any(|e| e.ipv6_address.starts_with("fd00:77::99/")));

    // The families must agree with the weft network's.
    docker.create_network(0, "four", &["--subnet", "10.78.0.0/24"]).await;
    let no_ipv6 = docker.create_network_refused(1, "four6", &["--ipv6", "--ipam-opt", "weft.network=four"]);
    assert!(no_ipv6.contains("remote:") && no_ipv6.contains("has no IPv6"), "{no_ipv6}");
    let without = docker.create_network_refused(
        1,
        "six4",
        &["--ipam-opt", "weft.network=six", "--subnet", "10.77.0.0/24"],
    );
    assert!(without.contains("with --ipv6"), "{without}");
    // Without its subnets, Docker would take the network's own bridge here for a clash.
    let unnamed = docker.create_network_refused(1, "six6", &["--ipv6", "--ipam-opt", "weft.network=six"]);
    assert!(unnamed.contains("--subnet 10.77.0.0/24 --subnet fd00:77::/64"), "{unnamed}");
}
