//! weft's attachment as a CNI result, in the configuration's version, after what earlier
//! plugins of a chain returned (`prevResult`).

use serde_json::{Value, json};
use weft_api::agent::Attachment;

use crate::error::CniError;

/// The ADD result: `prev` (an earlier plugin's result, if chained) with weft's interface,
/// addresses, default routes and DNS added, in `version`'s shape.
pub fn add_result(version: &str, attachment: &Attachment, prev: Option<&Value>) -> Value {
    let mut interfaces: Vec<Value> = list(prev, "interfaces");
    let index = interfaces.len();
    interfaces.push(json!({
        "name": attachment.interface,
        "mac": attachment.mac_address,
        "sandbox": attachment.netns,
    }));
    // Before 1.0.0 each address names its family.
    let versioned = !crate::at_least(version, "1.0.0");
    let mut ips: Vec<Value> = list(prev, "ips");
    for (address, gateway, family) in [
        (&attachment.ipv4_address, &attachment.ipv4_gateway, "4"),
        (&attachment.ipv6_address, &attachment.ipv6_gateway, "6"),
    ] {
        if address.is_empty() {
            continue;
        }
        let mut ip = json!({ "address": address, "interface": index });
        if !gateway.is_empty() {
            ip["gateway"] = json!(gateway);
        }
        if versioned {
            ip["version"] = json!(family);
        }
        ips.push(ip);
    }
    let mut routes: Vec<Value> = list(prev, "routes");
    if attachment.default_route {
        if !attachment.ipv4_gateway.is_empty() {
            routes.push(json!({ "dst": "0.0.0.0/0", "gw": attachment.ipv4_gateway }));
        }
        if !attachment.ipv6_address.is_empty() && !attachment.ipv6_gateway.is_empty() {
            routes.push(json!({ "dst": "::/0", "gw": attachment.ipv6_gateway }));
        }
    }
    // weft's DNS first: it answers the cluster's names and forwards the rest.
    let earlier = prev.and_then(|p| p.get("dns"));
    let merged = |key: &str, ours: &[String]| -> Vec<Value> {
        let mut all: Vec<Value> = ours.iter().map(|s| json!(s)).collect();
        for theirs in earlier.and_then(|d| d.get(key)).and_then(Value::as_array).into_iter().flatten() {
            if !all.contains(theirs) {
                all.push(theirs.clone());
            }
        }
        all
    };
    let mut result = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "dns": {
            "nameservers": merged("nameservers", &attachment.dns_servers),
            "search": merged("search", &attachment.dns_search),
        },
    });
    if !routes.is_empty() {
        result["routes"] = json!(routes);
    }
    result
}

fn list(prev: Option<&Value>, key: &str) -> Vec<Value> {
    prev.and_then(|p| p.get(key)).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// CHECK's test of `prev` (the result the runtime cached from ADD) against weft's view:
/// the interface in the sandbox, and each of weft's addresses on it.
pub fn check_prev_result(prev: &Value, attachment: &Attachment) -> Result<(), CniError> {
    let differs = |what: String| CniError::new(CniError::WEFT_REFUSED, what);
    let interfaces = list(Some(prev), "interfaces");
    let index = interfaces
        .iter()
        .position(|i| {
            i.get("name").and_then(Value::as_str) == Some(&attachment.interface)
                && i.get("sandbox").and_then(Value::as_str).is_some_and(|s| s == attachment.netns)
        })
        .ok_or_else(|| {
            differs(format!("prevResult has no interface {} in {}", attachment.interface, attachment.netns))
        })?;
    let ips = list(Some(prev), "ips");
    for address in [&attachment.ipv4_address, &attachment.ipv6_address].into_iter().filter(|a| !a.is_empty())
    {
        let listed = ips.iter().any(|ip| {
            ip.get("address").and_then(Value::as_str) == Some(address)
                && ip.get("interface").and_then(Value::as_u64) == Some(index as u64)
        });
        if !listed {
            return Err(differs(format!(
                "prevResult lacks address {address} on {}: weft gave it to the container",
                attachment.interface
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            interface: "eth0".into(),
            netns: "/run/netns/netns-1b2c".into(),
            mac_address: "02:42:0a:58:00:07".into(),
            ipv4_address: "10.88.0.7/24".into(),
            ipv4_gateway: "10.88.0.1".into(),
            ipv6_address: "fd00:88::7/64".into(),
            ipv6_gateway: "fd00:88::1".into(),
            default_route: true,
            dns_servers: vec!["10.88.0.1".into()],
            dns_search: vec!["app".into()],
            ..Attachment::default()
        }
    }

    #[test]
    fn results_take_the_configurations_version() {
        let result = add_result("1.0.0", &attachment(), None);
        assert_eq!(
            result,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:42:0a:58:00:07", "sandbox": "/run/netns/netns-1b2c"}],
                "ips": [
                    {"address": "10.88.0.7/24", "gateway": "10.88.0.1", "interface": 0},
                    {"address": "fd00:88::7/64", "gateway": "fd00:88::1", "interface": 0},
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": "fd00:88::1"}],
                "dns": {"nameservers": ["10.88.0.1"], "search": ["app"]},
            })
        );
        let old = add_result("0.4.0", &attachment(), None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["cniVersion"], "0.4.0");
        // A second network: no default routes.
        let second = Attachment { interface: "eth1".into(), default_route: false, ..attachment() };
        assert!(add_result("1.0.0", &second, None).get("routes").is_none());
    }

    #[test]
    fn a_chain_keeps_what_came_before() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/netns-1b2c"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"]},
        });
        let result = add_result("1.0.0", &attachment(), Some(&prev));
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(result["ips"][1]["interface"], 1);
        assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
        assert_eq!(result["dns"]["nameservers"], json!(["10.88.0.1", "1.1.1.1"]));
        check_prev_result(&result, &attachment()).unwrap();
    }

    #[test]
    fn check_finds_what_the_cached_result_lacks() {
        let result = add_result("1.0.0", &attachment(), None);
        let moved = Attachment { netns: "/run/netns/other".into(), ..attachment() };
        assert!(check_prev_result(&result, &moved).unwrap_err().msg.contains("no interface eth0"));
        let readdressed = Attachment { ipv4_address: "10.88.0.8/24".into(), ..attachment() };
        assert!(check_prev_result(&result, &readdressed).unwrap_err().msg.contains("10.88.0.8/24"));
    }
}
