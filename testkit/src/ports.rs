//! Free ports on loopback (bound, then released for the process under test to take).

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(err) => panic!("no free TCP port on loopback: {err}"),
    }
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    match std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
        Ok(addr) => addr.port(),
        Err(err) => panic!("no free UDP port on loopback: {err}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_bindable() {
        let tcp = super::free_tcp_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", tcp)).is_ok());
        let udp = super::free_udp_port();
        assert!(std::net::UdpSocket::bind(("127.0.0.1", udp)).is_ok());
    }
}
