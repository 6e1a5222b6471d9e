//! How `weft` prints: Docker's table layout, `--format json` and `{{.Field}}` templates, and
//! `inspect` documents shaped like `docker network inspect`. Pure: records in, text out.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use weft_api::pb;

/// A record as rows of named fields, in column order.
pub type Row = Vec<(&'static str, String)>;

/// RFC 3339 in UTC, as Docker prints `Created`.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (year, month, day) = weft_core::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        t.nanos.max(0)
    )
}

/// Docker shows 12 hex digits of an id unless `--no-trunc`.
pub fn short(id: &str, truncate: bool) -> String {
    if truncate { id.chars().take(12).collect() } else { id.to_string() }
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn network_row(n: &pb::Network, truncate: bool) -> Row {
    vec![
        ("ID", short(&n.id, truncate)),
        ("Name", n.name.clone()),
        ("Driver", n.driver.clone()),
        ("Scope", n.scope.clone()),
        ("IPv6", n.enable_ipv6.to_string()),
        ("Internal", n.internal.to_string()),
        ("Encrypted", n.encrypted.to_string()),
        ("VNI", n.vni.to_string()),
        ("Subnet", n.ipam_config.iter().map(|c| c.subnet.clone()).collect::<Vec<_>>().join(",")),
        ("Endpoints", n.endpoint_count.to_string()),
        ("Labels", labels(&n.labels)),
        ("CreatedAt", time(n.created.as_ref())),
    ]
}

/// The columns `ls` shows by default, as Docker's `docker network ls` (plus weft's).
pub const NETWORK_COLUMNS: &[&str] = &["ID", "Name", "Driver", "Scope", "Subnet", "Encrypted"];

pub fn endpoint_row(e: &pb::Endpoint, truncate: bool) -> Row {
    vec![
        ("ID", short(&e.id, truncate)),
        ("Network", e.network_name.clone()),
        ("Node", e.node.clone()),
        ("Container", short(&e.container_id, truncate)),
        ("Name", e.container_name.clone()),
        ("IPv4", e.ipv4_address.clone()),
        ("IPv6", e.ipv6_address.clone()),
        ("MAC", e.mac_address.clone()),
        ("State", endpoint_state(e)),
        ("Ports", ports_column(e)),
    ]
}

/// The host addresses a published port is open on, as Docker prints them: every address is
/// 0.0.0.0, and :: too on a dual-stack endpoint.
fn host_ips(e: &pb::Endpoint, p: &pb::PublishedPort) -> Vec<String> {
    if !p.host_ip.is_empty() {
        return vec![p.host_ip.clone()];
    }
    let mut ips = vec!["0.0.0.0".to_string()];
    if !e.ipv6_address.is_empty() {
        ips.push("::".to_string());
    }
    ips
}

fn protocol(p: &pb::PublishedPort) -> &str {
    if p.protocol.is_empty() { "tcp" } else { &p.protocol }
}

/// `docker ps`'s PORTS: `0.0.0.0:8080->80/tcp, :::8080->80/tcp`.
pub fn ports_column(e: &pb::Endpoint) -> String {
    e.ports
        .iter()
        .flat_map(|p| {
            host_ips(e, p).into_iter().map(move |ip| {
                let host = if ip.contains(':') && ip != "::" { format!("[{ip}]") } else { ip };
                format!("{host}:{}->{}/{}", p.host_port, p.container_port, protocol(p))
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Docker's `NetworkSettings.Ports`: `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
pub fn ports_map(e: &pb::Endpoint) -> Value {
    let mut map = serde_json::Map::new();
    for p in &e.ports {
        let key = format!("{}/{}", p.container_port, protocol(p));
        let bindings = map.entry(key).or_insert_with(|| json!([]));
        if let Value::Array(list) = bindings {
            for ip in host_ips(e, p) {
                list.push(json!({ "HostIp": ip, "HostPort": p.host_port.to_string() }));
            }
        }
    }
    Value::Object(map)
}

/// `ok`, or `failed: <why>` as the container's host reported it.
pub fn endpoint_state(e: &pb::Endpoint) -> String {
    if e.problem.is_empty() { "ok".to_string() } else { format!("failed: {}", e.problem) }
}

pub const ENDPOINT_COLUMNS: &[&str] = &["ID", "Network", "Node", "Name", "IPv4", "MAC", "State", "Ports"];

pub fn node_status(status: i32) -> &'static str {
    match pb::NodeStatus::try_from(status) {
        Ok(pb::NodeStatus::Up) => "up",
        Ok(pb::NodeStatus::Down) => "down",
        _ => "unknown",
    }
}

pub fn node_row(n: &pb::Node) -> Row {
    vec![
        ("Name", n.name.clone()),
        ("Status", node_status(n.status).to_string()),
        ("Underlay", n.underlay_address.clone()),
        ("Tunnel", n.tunnel_address.clone()),
        ("Endpoints", n.endpoint_count.to_string()),
        ("WireGuard", n.wireguard_backend.clone()),
        ("Version", n.agent_version.clone()),
    ]
}

pub const NODE_COLUMNS: &[&str] = &["Name", "Status", "Underlay", "Tunnel", "Endpoints", "WireGuard"];

/// One member's row. `reported_by` is whose view the list is (0: no leader could be asked),
/// and without the leader's view reachability and replication are unknown, not false.
pub fn member_row(m: &pb::Member, leader: u64, reported_by: u64) -> Row {
    let known = reported_by != 0 || m.reachable;
    vec![
        ("ID", m.id.to_string()),
        ("Address", m.address.clone()),
        (
            "Role",
            if m.id == leader {
                "leader"
            } else if m.voter {
                "voter"
            } else {
                "learner"
            }
            .to_string(),
        ),
        ("Reachable", if known { m.reachable.to_string() } else { "unknown".to_string() }),
        (
            "Matched",
            if known && reported_by != 0 { m.matched_index.to_string() } else { "unknown".to_string() },
        ),
    ]
}

pub const MEMBER_COLUMNS: &[&str] = &["ID", "Address", "Role", "Reachable", "Matched"];

/// Header text of a field: `Name` → `NAME`, `CreatedAt` → `CREATED AT`, with Docker's
/// `NETWORK ID` for a network's id.
fn header(field: &str, kind: &str) -> String {
    match field {
        "ID" => return format!("{} ID", kind.to_uppercase()),
        "WireGuard" | "IPv4" | "IPv6" => return field.to_uppercase(),
        _ => {}
    }
    let mut out = String::new();
    let mut previous_upper = true;
    for c in field.chars() {
        if c.is_uppercase() && !previous_upper {
            out.push(' ');
        }
        previous_upper = c.is_uppercase();
        out.extend(c.to_uppercase());
    }
    out
}

/// Columns padded as Docker pads them: at least three spaces between columns.
pub fn table(kind: &str, columns: &[&str], rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| row.iter().find(|(name, _)| name == c).map(|(_, v)| v.clone()).unwrap_or_default())
                .collect()
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| header(c, kind)).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([headers[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |values: &[String]| {
        let mut s = String::new();
        for (i, v) in values.iter().enumerate() {
            if i + 1 == values.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<width$}   ", width = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&headers);
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// `--format`: `table` (the default columns), `json` (one object per line), or a template
/// with `{{.Field}}` placeholders (`\t` and `\n` escapes allowed; a leading `table ` prints
/// a header). An unknown field is an error naming the fields there are.
pub fn format_rows(
    kind: &str,
    format: &str,
    default_columns: &[&str],
    rows: &[Row],
) -> Result<String, String> {
    match format {
        "" | "table" => return Ok(table(kind, default_columns, rows)),
        "json" => {
            let mut out = String::new();
            for row in rows {
                let object: serde_json::Map<String, Value> =
                    row.iter().map(|(k, v)| ((*k).to_string(), Value::String(v.clone()))).collect();
                out.push_str(&Value::Object(object).to_string());
                out.push('\n');
            }
            return Ok(out);
        }
        _ => {}
    }
    let (with_header, template) = match format.strip_prefix("table ") {
        Some(rest) => (true, rest),
        None => (false, format),
    };
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let fields: Vec<&str> = rows.first().map(|r| r.iter().map(|(k, _)| *k).collect()).unwrap_or_default();
    let render = |lookup: &dyn Fn(&str) -> Option<String>| -> Result<String, String> {
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end =
                rest[start..].find("}}").ok_or_else(|| format!("--format {format:?}: unclosed {{{{"))?;
            let field = rest[start + 2..start + end].trim();
            let name = field.strip_prefix('.').ok_or_else(|| {
                format!("--format {format:?}: {{{{{field}}}}} is not a field; write {{{{.Name}}}}")
            })?;
            out.push_str(&lookup(name).ok_or_else(|| {
                format!("--format {format:?}: no field {name:?}; there are {}", fields.join(", "))
            })?);
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let mut out = String::new();
    if with_header {
        out.push_str(&render(&|name| Some(header(name, kind)))?);
        out.push('\n');
    }
    for row in rows {
        out.push_str(&render(&|name| row.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))?);
        out.push('\n');
    }
    Ok(out)
}

/// One network as `docker network inspect` shows it; `Containers` holds its endpoints on
/// every host (keyed by container id, with the host in `Node`).
pub fn inspect_network(n: &pb::Network, endpoints: &[pb::Endpoint]) -> Value {
    let config: Vec<Value> = n
        .ipam_config
        .iter()
        .map(|c| {
            let mut entry = serde_json::Map::new();
            entry.insert("Subnet".into(), json!(c.subnet));
            if !c.ip_range.is_empty() {
                entry.insert("IPRange".into(), json!(c.ip_range));
            }
            entry.insert("Gateway".into(), json!(c.gateway));
            if !c.auxiliary_addresses.is_empty() {
                entry.insert("AuxiliaryAddresses".into(), json!(c.auxiliary_addresses));
            }
            Value::Object(entry)
        })
        .collect();
    let containers: serde_json::Map<String, Value> = endpoints
        .iter()
        .map(|e| {
            (
                e.container_id.clone(),
                json!({
                    "Name": e.container_name,
                    "EndpointID": e.id,
                    "MacAddress": e.mac_address,
                    "IPv4Address": e.ipv4_address,
                    "IPv6Address": e.ipv6_address,
                    "Aliases": e.aliases,
                    "Node": e.node,
                    "State": endpoint_state(e),
                    "Ports": ports_map(e),
                }),
            )
        })
        .collect();
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": time(n.created.as_ref()),
        "Scope": n.scope,
        "Driver": n.driver,
        "EnableIPv6": n.enable_ipv6,
        "IPAM": { "Driver": n.ipam_driver, "Options": {}, "Config": config },
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": n.labels,
        "VNI": n.vni,
        "Encrypted": n.encrypted,
        "MTU": n.mtu,
    })
}

pub fn inspect_node(n: &pb::Node, endpoints: &[pb::Endpoint]) -> Value {
    json!({
        "Name": n.name,
        "ID": n.id,
        "Status": node_status(n.status),
        "UnderlayAddress": n.underlay_address,
        "UnderlayMTU": n.underlay_mtu,
        "TunnelAddress": n.tunnel_address,
        "WireGuard": {
            "Backend": n.wireguard_backend,
            "PublicKey": n.wireguard_public_key,
            "Port": n.wireguard_port,
        },
        "Labels": n.labels,
        "Registered": time(n.registered.as_ref()),
        "StatusChanged": time(n.status_changed.as_ref()),
        "AgentVersion": n.agent_version,
        "AppliedRevision": n.applied_revision,
        "Endpoints": endpoints.iter().map(|e| json!({
            "Network": e.network_name,
            "Container": e.container_id,
            "Name": e.container_name,
            "IPv4Address": e.ipv4_address,
            "IPv6Address": e.ipv6_address,
            "State": endpoint_state(e),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> pb::Network {
        pb::Network {
            id: "0123456789abcdef0123".into(),
            name: "blue".into(),
            driver: "overlay".into(),
            scope: "global".into(),
            ipam_config: vec![pb::IpamConfig {
                subnet: "10.0.1.0/24".into(),
                gateway: "10.0.1.1".into(),
                ..Default::default()
            }],
            created: Some(prost_types::Timestamp { seconds: 1_795_000_000, nanos: 5 }),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_table_looks_like_docker_network_ls() {
        let out = format_rows(
            "network",
            "table",
            &["ID", "Name", "Driver", "Scope"],
            &[network_row(&network(), true)],
        )
        .unwrap();
        assert_eq!(out, "NETWORK ID     NAME   DRIVER    SCOPE\n0123456789ab   blue   overlay   global\n");
    }

    #[test]
    fn templates_json_and_unknown_fields() {
        let rows = [network_row(&network(), false)];
        assert_eq!(
            format_rows("network", "{{.Name}}\\t{{ .ID }}", &[], &rows).unwrap(),
            "blue\t0123456789abcdef0123\n"
        );
        assert_eq!(
            format_rows("network", "table {{.Name}} {{.CreatedAt}}", &[], &rows).unwrap(),
            "NAME CREATED AT\nblue 2026-11-18T11:06:40.000000005Z\n"
        );
        let json: Value =
            serde_json::from_str(format_rows("network", "json", &[], &rows).unwrap().trim()).unwrap();
        assert_eq!(json["Labels"], "team=a");
        let err = format_rows("network", "{{.Nope}}", &[], &rows).unwrap_err();
        assert!(err.contains("no field \"Nope\"") && err.contains("Name"), "{err}");
        assert!(format_rows("network", "{{Name}}", &[], &rows).unwrap_err().contains("{{.Name}}"));
    }

    #[test]
    fn inspect_has_dockers_shape_and_every_hosts_containers() {
        let endpoint = pb::Endpoint {
            id: "e1".into(),
            container_id: "c1".into(),
            container_name: "web".into(),
            node: "h2".into(),
            ipv4_address: "10.0.1.2/24".into(),
            ..Default::default()
        };
        let doc = inspect_network(&network(), &[endpoint]);
        assert_eq!(doc["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(doc["Containers"]["c1"]["Name"], "web");
        assert_eq!(doc["Containers"]["c1"]["Node"], "h2");
        assert_eq!(doc["Created"], "2026-11-18T11:06:40.000000005Z");
        assert_eq!(doc["Scope"], "global");
    }
}
