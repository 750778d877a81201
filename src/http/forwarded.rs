//! Who the player is, as far as the network can tell: the peer address, or the address a
//! trusted proxy in front of licensegate reports. Vendors see an `X-Forwarded-For` that
//! licensegate builds from parsed addresses, never a player's header copied through.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;

use crate::http::problem::{Problem, Refusal};

/// The most addresses a forwarded chain keeps; longer chains keep the entries nearest to us,
/// which are the ones trusted proxies wrote.
pub(crate) const MAX_FORWARDED_ADDRESSES: usize = 8;

/// The player's address and the `X-Forwarded-For` the provider receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    pub ip: IpAddr,
    pub(crate) forwarded_for: HeaderValue,
    /// The peer is a trusted proxy: what it says about the client (a CDN's country header)
    /// may be believed.
    pub(crate) via_trusted_proxy: bool,
}

/// Works out the client from the peer and, when the peer is a trusted proxy, the chain it
/// forwarded. The client is the nearest address not itself a trusted proxy.
/// Every `X-Forwarded-For` line counts, in order: a proxy may add its own line beside the
/// player's. IPv4 peers of a dual-stack listener (`::ffff:a.b.c.d`) count as IPv4.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl IntoIterator<Item = &'a HeaderValue>,
    trusted_proxies: &[IpNet],
) -> Result<ClientAddress, Problem> {
    let peer = peer.to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut chain: Vec<IpAddr> = Vec::new();
    let via_trusted_proxy = trusted(&peer);
    if via_trusted_proxy {
        for line in forwarded {
            chain.extend(parse_chain(line)?);
        }
    }
    chain.push(peer);
    if chain.len() > MAX_FORWARDED_ADDRESSES {
        chain.drain(..chain.len() - MAX_FORWARDED_ADDRESSES);
    }
    let ip = chain
        .iter()
        .rev()
        .find(|ip| !trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer);
    let mut text = String::with_capacity(chain.len() * 24);
    for ip in &chain {
        if !text.is_empty() {
            text.push_str(", ");
        }
        let _ = write!(text, "{ip}");
    }
    let forwarded_for = HeaderValue::from_str(&text).map_err(|_| forwarded_for_invalid())?;
    Ok(ClientAddress {
        ip,
        forwarded_for,
        via_trusted_proxy,
    })
}

/// Entries are addresses, optionally with a port (`1.2.3.4:5`, `[::1]:5`), as proxies write.
fn parse_chain(header: &HeaderValue) -> Result<Vec<IpAddr>, Problem> {
    let text = header.to_str().map_err(|_| forwarded_for_invalid())?;
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
                .map(|ip| ip.to_canonical())
                .map_err(|_| forwarded_for_invalid())
        })
        .collect()
}

fn forwarded_for_invalid() -> Problem {
    Problem::new(Refusal::ForwardedForInvalid)
        .with_detail("a trusted proxy sent entries that are not IP addresses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_and_its_header_is_ignored() {
        let forwarded = HeaderValue::from_static("6.6.6.6, 7.7.7.7");
        let address = client_address(ip("203.0.113.9"), [&forwarded], &[]).unwrap();
        assert_eq!(address.ip, ip("203.0.113.9"));
        assert_eq!(address.forwarded_for, "203.0.113.9");
    }

    #[test]
    fn a_trusted_proxy_chain_is_parsed_and_the_nearest_untrusted_address_wins() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forwarded = HeaderValue::from_static("198.51.100.1, 203.0.113.5:4711 ,10.1.1.1");
        let address = client_address(ip("10.0.0.2"), [&forwarded], &trusted).unwrap();
        assert_eq!(address.ip, ip("203.0.113.5"));
        assert_eq!(
            address.forwarded_for,
            "198.51.100.1, 203.0.113.5, 10.1.1.1, 10.0.0.2"
        );
    }

    #[test]
    fn every_line_counts_and_mapped_ipv4_is_ipv4() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forged = HeaderValue::from_static("6.6.6.6");
        let added = HeaderValue::from_static("203.0.113.5");
        let address = client_address(ip("::ffff:10.0.0.2"), [&forged, &added], &trusted).unwrap();
        assert_eq!(address.ip, ip("203.0.113.5"));
        assert_eq!(address.forwarded_for, "6.6.6.6, 203.0.113.5, 10.0.0.2");
    }

    #[test]
    fn long_chains_are_capped_and_garbage_is_refused() {
        let trusted = nets(&["127.0.0.1/32"]);
        let long = (0..200)
            .map(|i| format!("192.0.2.{}", i % 250))
            .collect::<Vec<_>>()
            .join(", ");
        let address = client_address(
            ip("127.0.0.1"),
            [&HeaderValue::from_str(&long).unwrap()],
            &trusted,
        )
        .unwrap();
        assert_eq!(
            address.forwarded_for.to_str().unwrap().split(", ").count(),
            MAX_FORWARDED_ADDRESSES
        );
        let garbage = HeaderValue::from_static("<script>, 1.2.3.4");
        let refused = client_address(ip("127.0.0.1"), [&garbage], &trusted).unwrap_err();
        assert_eq!(refused.code, "forwarded_for_invalid");
    }
}
