//! `weft-echo PORT`: a TCP echo server, one thread per connection, for benchmarks that compare
//! paths to the same server (a container reached directly, through weft's published port,
//! through Docker's). Std only, so a container image needs just this file and its libc.

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "7".into());
    let listener = match TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap_or(7))) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("weft-echo: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}
