//! The target's network tables, `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}` (its own network
//! namespace): a socket inode's protocol, addresses and state, and whether a listener accepts
//! connections to an address. Pure parsing; `fd` does the reads.

use std::collections::HashSet;

/// One line of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetEntry {
    pub local: (std::net::IpAddr, u16),
    pub remote: (std::net::IpAddr, u16),
    /// The kernel's state number: 0x0A is LISTEN for TCP, 0x01 ESTABLISHED.
    pub state: u8,
    pub inode: u64,
}

/// The state number of a listening TCP socket.
pub const TCP_LISTEN: u8 = 0x0A;

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host (little-endian)
/// order as the kernel prints it.
fn parse_addr(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok())
        .collect();
    let words = words?;
    let ip = match (addr.len(), words.as_slice()) {
        (8, [w]) => std::net::IpAddr::V4(std::net::Ipv4Addr::from(w.to_le_bytes())),
        (32, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
            }
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The entries of one `/proc/net/{tcp,udp}{,6}` table; malformed lines are skipped.
pub fn parse_inet_table(text: &str) -> Vec<InetEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(InetEntry {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The path bound to the unix socket `inode` in `/proc/net/unix`, `Some(None)` when it is there
/// without a path, `None` when it is not there.
pub fn unix_socket_path(text: &str, inode: u64) -> Option<Option<String>> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(6)?.parse::<u64>().ok()? == inode).then(|| f.get(7).map(|p| p.to_string()))
    })
}

/// `1.2.3.4:80` or `[::1]:80`; an IPv4-mapped IPv6 address is shown as IPv4.
pub fn show(addr: &(std::net::IpAddr, u16)) -> String {
    match addr.0 {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", addr.1),
            None => format!("[{v6}]:{}", addr.1),
        },
        v4 => format!("{v4}:{}", addr.1),
    }
}

/// Whether a listening socket bound to `listen` accepts connections to `peer`: the same port,
/// and the same address or a wildcard one (IPv4-mapped addresses compared as IPv4).
pub fn listener_accepts(listen: &(std::net::IpAddr, u16), peer: &(std::net::IpAddr, u16)) -> bool {
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    listen.1 == peer.1 && (listen.0.is_unspecified() || canon(listen.0) == canon(peer.0))
}

/// The inodes of the sockets among `links` (the targets of `/proc/PID/fd/*`).
pub fn socket_inodes<'a>(links: impl IntoIterator<Item = &'a str>) -> HashSet<u64> {
    links
        .into_iter()
        .filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:C350 0000000000000000FFFF00000100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn inet_tables() {
        let v4 = parse_inet_table(TCP);
        assert_eq!(v4.len(), 2, "the malformed line is skipped");
        assert_eq!(v4[0].local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080));
        assert_eq!(v4[0].state, TCP_LISTEN);
        assert_eq!(v4[1].remote, (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080));
        assert_eq!(v4[1].inode, 4343);
        let v6 = parse_inet_table(TCP6);
        assert_eq!(v6[0].local, (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80));
        assert_eq!(v6[1].local, (IpAddr::V6(Ipv6Addr::LOCALHOST), 50000));
        assert_eq!(
            show(&v6[1].remote),
            "127.0.0.1:5432",
            "v4-mapped shown as v4"
        );
        assert_eq!(show(&v6[1].local), "[::1]:50000");
        assert!(parse_inet_table("header only\n").is_empty());
        assert!(parse_inet_table("").is_empty());
    }

    #[test]
    fn listeners_accept_their_port() {
        let lo = (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
        let any = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
        let any6 = (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080);
        let mapped = (IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 8080);
        let other = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080);
        assert!(listener_accepts(&lo, &lo));
        assert!(listener_accepts(&any, &other));
        assert!(listener_accepts(&any6, &lo));
        assert!(listener_accepts(&mapped, &lo));
        assert!(!listener_accepts(&lo, &other));
        assert!(!listener_accepts(&lo, &(lo.0, 8081)));
    }

    #[test]
    fn unix_table() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/postgresql/.s.PGSQL.5432
0000000000000000: 00000003 00000000 00000000 0001 03 778
";
        assert_eq!(
            unix_socket_path(text, 777),
            Some(Some("/run/postgresql/.s.PGSQL.5432".into()))
        );
        assert_eq!(unix_socket_path(text, 778), Some(None));
        assert_eq!(unix_socket_path(text, 779), None);
    }
}
