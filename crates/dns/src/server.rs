//! The sockets: UDP and TCP listeners on each local network's gateway, answering from the
//! current name table and forwarding the rest to upstream resolvers. Local names never wait
//! on an upstream: forwards run in their own tasks, bounded in number; when all slots are
//! taken the asker gets REFUSED at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::answer::{Outcome, answer, refused, server_failure};
use crate::table::NameTable;

/// How the server answers and forwards.
#[derive(Debug, Clone)]
pub struct Settings {
    /// TTL of weft's answers: short, since records follow the registry.
    pub ttl: u32,
    /// Upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets before the next is tried.
    pub upstream_timeout: Duration,
    /// Forwards in flight at once; beyond that, REFUSED.
    pub max_forwards: usize,
}

#[derive(Debug)]
pub struct Dns {
    settings: Settings,
    table: RwLock<Arc<NameTable>>,
    forwards: Arc<Semaphore>,
}

/// The resolvers named in a resolv.conf, on port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Dns {
    pub fn new(settings: Settings) -> Arc<Dns> {
        let forwards = Arc::new(Semaphore::new(settings.max_forwards.max(1)));
        Arc::new(Dns { settings, table: RwLock::new(Arc::new(NameTable::default())), forwards })
    }

    /// Swaps in a new table; queries in flight finish with the old one.
    pub fn set_table(&self, table: NameTable) {
        *self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
    }

    fn table(&self) -> Arc<NameTable> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Answers queries over TCP (for answers too big for UDP) until the task is dropped.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let dns = self.clone();
            tokio::spawn(async move {
                // An idle or stuck client cannot hold the connection forever.
                let _ = tokio::time::timeout(Duration::from_secs(10), dns.tcp_connection(stream, peer)).await;
            });
        }
    }

    async fn tcp_connection(&self, mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        loop {
            let length = usize::from(stream.read_u16().await?);
            let mut packet = vec![0u8; length];
            stream.read_exact(&mut packet).await?;
            let reply = match answer(&packet, peer.ip(), &self.table(), self.settings.ttl, false) {
                Outcome::Reply(bytes) => Some(bytes),
                Outcome::Drop => return Ok(()),
                Outcome::Forward => match self.forwards.clone().try_acquire_owned() {
                    Ok(_permit) => self.forward_tcp(&packet).await.or_else(|| server_failure(&packet)),
                    Err(_) => refused(&packet),
                },
            };
            if let Some(reply) = reply {
                let length = u16::try_from(reply.len()).unwrap_or(u16::MAX);
                stream.write_u16(length).await?;
                stream.write_all(&reply[..usize::from(length)]).await?;
            }
        }
    }

    /// Asks each upstream in turn over UDP; the first answer with the query's id wins.
    async fn forward_udp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let id = packet.get(..2)?;
        for upstream in &self.settings.upstreams {
            let local: SocketAddr =
                if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let Ok(socket) = UdpSocket::bind(local).await else { continue };
            if socket.send_to(packet, upstream).await.is_err() {
                continue;
            }
            let mut buffer = vec![0u8; 4096];
            let deadline = tokio::time::Instant::now() + self.settings.upstream_timeout;
            while let Ok(Ok((len, from))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await
            {
                if from == *upstream && buffer.get(..2) == Some(id) {
                    buffer.truncate(len);
                    return Some(buffer);
                }
            }
            tracing::debug!(%upstream, "upstream resolver did not answer in time; trying the next");
        }
        None
    }

    /// Asks each upstream in turn over TCP.
    async fn forward_tcp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        for upstream in &self.settings.upstreams {
            let attempt = async {
                let mut stream = TcpStream::connect(upstream).await?;
                stream.write_u16(u16::try_from(packet.len()).unwrap_or(u16::MAX)).await?;
                stream.write_all(packet).await?;
                let length = usize::from(stream.read_u16().await?);
                let mut reply = vec![0u8; length];
                stream.read_exact(&mut reply).await?;
                Ok::<_, std::io::Error>(reply)
            };
            if let Ok(Ok(reply)) = tokio::time::timeout(self.settings.upstream_timeout, attempt).await {
                return Some(reply);
            }
        }
        None
    }
}

/// UDP threads per listening address: blocking loops answer local names without a trip
/// through the async runtime (fewer wake-ups per query); forwards go to the runtime. One is
/// enough (a plain answer costs about 0.2 µs in user space) and beats two: a second thread
/// on the same socket adds wake-ups, not answers. In pairs from a container, one thread
/// answered 5-7 % more queries/s with 20-27 % less CPU per answer than two (BENCHMARKS.md,
/// 2026-12-04 ninth part).
pub const UDP_THREADS: usize = 1;

/// A running DNS listener: the address it answers on (the port filled in when 0 was asked
/// for) and the task that serves it until aborted.
#[derive(Debug)]
pub struct Listening {
    pub address: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds UDP and TCP on `address` and serves both until the returned task is aborted. Port 0
/// takes a port free for both protocols.
pub async fn listen(dns: Arc<Dns>, address: SocketAddr) -> std::io::Result<Listening> {
    let (udp, tcp) = bind_both(address).await?;
    let address = udp.local_addr()?;
    // Wakes the loops now and then to notice they should stop.
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runtime = tokio::runtime::Handle::current();
    for _ in 0..UDP_THREADS {
        let (dns, socket, stop, runtime) = (dns.clone(), udp.try_clone()?, stop.clone(), runtime.clone());
        std::thread::Builder::new()
            .name(format!("dns {address}"))
            .spawn(move || dns.serve_udp_blocking(&socket, &stop, &runtime))?;
    }
    let task = tokio::spawn(async move {
        let _stop = StopOnDrop(stop);
        dns.serve_tcp(tcp).await;
    });
    Ok(Listening { address, task })
}

/// Binds the UDP socket and the TCP listener of one address. For port 0 the kernel picks the
/// UDP port, which TCP may already have in use elsewhere: then another is tried, a few times.
async fn bind_both(address: SocketAddr) -> std::io::Result<(std::net::UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = std::net::UdpSocket::bind(address)?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if address.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < ATTEMPTS => {
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tells the UDP threads to stop when the listener's task ends (is aborted).
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Queries taken from the socket in one system call, and answers sent in one.
const BATCH: usize = 32;

impl Dns {
    fn serve_udp_blocking(
        self: Arc<Self>,
        socket: &std::net::UdpSocket,
        stop: &std::sync::atomic::AtomicBool,
        runtime: &tokio::runtime::Handle,
    ) {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let mut buffers = vec![[0u8; 4096]; BATCH];
        let mut incoming = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut outgoing = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut queries: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
        let mut replies: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            queries.clear();
            {
                let mut slices: Vec<[std::io::IoSliceMut<'_>; 1]> =
                    buffers.iter_mut().map(|b| [std::io::IoSliceMut::new(b)]).collect();
                let Ok(received) =
                    recvmmsg(fd, &mut incoming, slices.iter_mut(), MsgFlags::MSG_WAITFORONE, None)
                else {
                    continue;
                };
                queries.extend(received.map(|m| (m.bytes, m.address)));
            }
            replies.clear();
            to.clear();
            let table = self.table();
            for (buffer, (len, address)) in buffers.iter().zip(&queries) {
                let Some(peer) = address.as_ref().and_then(socket_address) else { continue };
                let packet = &buffer[..*len];
                match answer(packet, peer.ip(), &table, self.settings.ttl, true) {
                    Outcome::Reply(bytes) => {
                        replies.push(bytes);
                        to.push(*address);
                    }
                    Outcome::Drop => {}
                    Outcome::Forward => {
                        let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
                            if let Some(bytes) = refused(packet) {
                                replies.push(bytes);
                                to.push(*address);
                            }
                            continue;
                        };
                        let Ok(reply_socket) = socket.try_clone() else { continue };
                        let (dns, packet) = (self.clone(), packet.to_vec());
                        runtime.spawn(async move {
                            let _permit = permit;
                            if let Some(reply) =
                                dns.forward_udp(&packet).await.or_else(|| server_failure(&packet))
                            {
                                let _ = reply_socket.send_to(&reply, peer);
                            }
                        });
                    }
                }
            }
            let mut sent = 0;
            while sent < replies.len() {
                let slices: Vec<[std::io::IoSlice<'_>; 1]> =
                    replies[sent..].iter().map(|r| [std::io::IoSlice::new(r)]).collect();
                match sendmmsg(fd, &mut outgoing, slices.iter(), &to[sent..], [], MsgFlags::empty()) {
                    Ok(results) => sent += results.count().max(1),
                    // One asker's address refused: skip its answer, send the rest.
                    Err(_) => sent += 1,
                }
            }
        }
    }
}

fn socket_address(address: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_nameserver_lines() {
        let conf = "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n  nameserver 2001:db8::53\noptions ndots:1\nnameserver bogus\n";
        assert_eq!(
            upstreams_from_resolv_conf(conf),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }
}
