//! The original destination of a redirected connection (SO_ORIGINAL_DST):
//! where the app meant to connect before the nat table sent it to the proxy.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the connection had before redirection; `None` when it
/// was not redirected (or the kernel cannot tell).
pub fn original_dst(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr().ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into the zeroed storage,
    // which is large enough for either address family.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // An IPv4 connection on a dual-stack socket has a v4-mapped local
        // address; its conntrack entry is IPv4's.
        let v4 = match local {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let level = if v4 { libc::SOL_IP } else { libc::SOL_IPV6 };
        let rc = libc::getsockopt(
            fd,
            level,
            SO_ORIGINAL_DST,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    0,
                    0,
                )))
            }
            _ => None,
        }
    }
}
