//! Entry point for fuzzing the DNS packet path: any bytes, from any asker, over UDP or TCP,
//! against a table with a few containers. Shared by the cargo-fuzz target in `fuzz/` and the
//! stable property test. It must always return: a panic here takes a host's DNS down.

use std::net::{IpAddr, Ipv4Addr};

use crate::answer::{answer, refused, server_failure};
use crate::{EndpointRecord, NameTable};

/// `count` containers `web0`… on network `blue`, all with the alias `web`, at 10.0.1.2 on.
pub fn table(count: u8) -> NameTable {
    NameTable::build((0..count).map(|i| EndpointRecord {
        network_id: "n1".into(),
        network_name: "blue".into(),
        node: "h1".into(),
        container_id: format!("c{i}"),
        name: format!("web{i}"),
        aliases: vec!["web".into()],
        ipv4: Some(Ipv4Addr::new(10, 0, 1, 2 + i)),
        ipv6: None,
    }))
}

/// One fuzz input: the first byte picks the asker and transport, the rest is the packet.
pub fn one(table: &NameTable, data: &[u8]) {
    let Some((selector, packet)) = data.split_first() else { return };
    let asker = IpAddr::V4(Ipv4Addr::new(10, 0, 1, selector & 7));
    let _ = answer(packet, asker, table, 5, selector & 8 == 0);
    let _ = refused(packet);
    let _ = server_failure(packet);
}
