//! The floor: a relay that only copies bytes, with a blocking thread per
//! direction and TCP_NODELAY, no parsing, no event loop. What it adds to a
//! direct connection is the least any proxy adds on this machine without
//! busy-polling (two more loopback hops and two more wake-ups per
//! request); proxies' added latency is read against it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

/// Copies `from` → `to` until end of stream, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(listener: TcpListener, to: SocketAddr) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(to) else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || pump(client, server));
        std::thread::spawn(move || pump(s2, c2));
    }
}

/// Relays each `listen=to` pair until killed; prints `ready` once all
/// listeners are bound.
pub fn run(pairs: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    for &(listen, to) in pairs {
        let l = TcpListener::bind(listen)?;
        threads.push(std::thread::spawn(move || serve(l, to)));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
