//! The SSRF guard: endpoints may only be reached on public unicast addresses unless
//! `ALLOW_PRIVATE_TARGETS` is set. Names are resolved here and the connection goes to the vetted
//! address only, so a DNS answer cannot change between the check and the connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::lookups::{Lookups, system_lookup};

/// Whether a delivery may connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0                                   // 0.0.0.0/8 "this network"
        || (a == 100 && (64..128).contains(&b))     // 100.64.0.0/10 CGNAT
        || (a == 192 && b == 0 && c == 0)           // 192.0.0.0/24 IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))       // 198.18.0.0/15 benchmarking
        || (a == 192 && b == 88 && c == 99)         // 192.88.99.0/24 6to4 relay anycast
        || a >= 240) // 240.0.0.0/4 reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00            // fc00::/7 unique local
        || (seg[0] & 0xffc0) == 0xfe80            // fe80::/10 link-local
        || (seg[0] & 0xffc0) == 0xfec0            // fec0::/10 site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // 2001:db8::/32 documentation
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // 64:ff9b:1::/48 local-use NAT64
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0])) // 100::/64 discard
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail());
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return Some(tail());
    }
    // SIIT IPv4-translated addresses, ::ffff:0:a.b.c.d.
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail());
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    None
}

/// A reqwest resolver that resolves with the system resolver and keeps only public addresses.
/// If none is left the connect fails with a `blocked` error. Connects to one host at once share
/// one lookup ([`Lookups`]).
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    lookups: Lookups,
}

#[derive(Debug, thiserror::Error)]
#[error("{host} {reason}; set ALLOW_PRIVATE_TARGETS=true to allow private targets")]
pub struct Blocked {
    pub host: String,
    pub reason: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookups = self.lookups.clone();
        Box::pin(async move {
            check_name(&host)?;
            let found = lookups
                .resolve(&host, system_lookup)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
            let allowed = keep_public(&host, found)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses a delivery may connect to: the public ones among what `host` resolved to, or
/// `Blocked` if there are none.
fn keep_public(host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Blocked> {
    let addrs: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
    let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
    if allowed.is_empty() {
        return Err(non_public(host, &addrs));
    }
    Ok(allowed)
}

/// Names that only ever mean this host or a private network (RFC 6761 `localhost`, mDNS
/// `.local`, RFC 8375 `.home.arpa`, and the customary `.internal`/`.localdomain`), refused
/// before any lookup: a resolver may answer them from files, a search domain or the LAN.
fn check_name(host: &str) -> Result<(), Blocked> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let local = ["localhost", "local", "internal", "localdomain", "home.arpa"]
        .iter()
        .any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
        });
    if local {
        return Err(Blocked {
            host: host.to_string(),
            reason: "is a local-only name".into(),
        });
    }
    Ok(())
}

fn non_public(host: &str, addrs: &[IpAddr]) -> Blocked {
    if addrs.is_empty() {
        return Blocked {
            host: host.to_string(),
            reason: "resolves to no address".into(),
        };
    }
    let list = addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Blocked {
        host: host.to_string(),
        reason: format!("resolves to a non-public address ({list})"),
    }
}

/// Checks a URL whose host is an IP literal (those never reach the resolver). Names are checked
/// by [`GuardedResolver`] at connect time.
pub fn check_literal(url: &url::Url) -> Result<(), Blocked> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_public(ip) {
        return Ok(());
    }
    Err(Blocked {
        host: ip.to_string(),
        reason: "is not a public address".into(),
    })
}

/// Refuses `host` if any address it resolved to is not public. Stricter than the connect-time
/// filter (which drops the non-public addresses and uses the rest): a name that mixes public and
/// private addresses has no business being a customer's webhook endpoint.
pub fn check_addrs(host: &str, addrs: &[IpAddr]) -> Result<(), Blocked> {
    if addrs.iter().all(|ip| is_public(*ip)) {
        Ok(())
    } else {
        Err(non_public(host, addrs))
    }
}

/// How long a subscription change may wait for DNS before the name is accepted unresolved.
const VET_LOOKUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The check on create and update: IP literals in any spelling, then the name's current
/// addresses. A name that does not resolve (yet) is accepted: every delivery checks again, and
/// only vetted addresses are ever connected to.
pub async fn vet_url(url: &url::Url) -> Result<(), Blocked> {
    check_literal(url)?;
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    check_name(host)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(VET_LOOKUP_LIMIT, lookup).await {
        Ok(Ok(found)) => {
            let addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
            check_addrs(host, &addrs)
        }
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.10",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(!is_public(parsed), "{ip} should be blocked");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    /// The hostile-target table: every entry must be refused by the create/update
    /// check, whatever the spelling. Names are resolved for real (only through /etc/hosts here:
    /// the local-only names are refused before any lookup).
    #[tokio::test]
    async fn hostile_targets_are_all_refused() {
        let hostile = [
            "http://127.0.0.1/",
            "http://2130706433/",              // decimal 127.0.0.1
            "http://0x7f000001/",              // hex
            "http://0177.0.0.1/",              // octal
            "http://0x7f.0.0.1/",              // mixed
            "http://127.1/",                   // short form
            "http://0/",                       // 0.0.0.0
            "http://0x0a.0x00.0x00.0x01/hook", // hex 10.0.0.1
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",     // IPv4-mapped
            "http://[::ffff:7f00:1]/",        // the same, in hex
            "http://[0:0:0:0:0:ffff:a00:1]/", // mapped 10.0.0.1
            "http://[::127.0.0.1]/",          // IPv4-compatible
            "http://[64:ff9b::a9fe:a9fe]/",   // NAT64 of 169.254.169.254
            "http://[2002:c0a8:101::]/",      // 6to4 of 192.168.1.1
            "http://[64:ff9b:1::a9fe:a9fe]/", // local-use NAT64 of 169.254.169.254
            "http://[::ffff:0:7f00:1]/",      // SIIT-translated 127.0.0.1
            "http://192.88.99.1/",            // 6to4 relay anycast
            "http://[fd00::1]/",              // unique local
            "http://[fe80::1]/",              // link-local
            "http://localhost/",
            "http://localhost./",
            "http://LocalHost:8080/",
            "http://api.localhost/",
            "http://printer.local/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://router.home.arpa/",
            "http://169.254.169.254/latest/meta-data/", // cloud metadata
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://192.168.0.1/",
            "http://100.64.0.1/",      // CGNAT
            "http://224.0.0.1/",       // multicast
            "http://255.255.255.255/", // broadcast
            "http://192.0.2.1/",       // documentation
            "http://198.18.0.1/",      // benchmarking
            "http://240.0.0.1/",       // reserved
        ];
        for raw in hostile {
            let url = url::Url::parse(raw).unwrap();
            assert!(vet_url(&url).await.is_err(), "{raw} should be refused");
        }
        assert!(hostile.len() >= 20);
    }

    #[test]
    fn names_resolving_to_private_addresses_are_refused() {
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let err = check_addrs("rebind.example", &[ten]).unwrap_err();
        assert!(err.to_string().contains("10.1.2.3"), "{err}");
        // One private address among public ones is enough to refuse the name.
        assert!(check_addrs("mixed.example", &[public, ten]).is_err());
        assert!(check_addrs("hooks.example", &[public]).is_ok());
    }

    #[test]
    fn deliveries_connect_only_to_the_public_addresses_of_a_name() {
        let private: SocketAddr = "10.0.0.7:0".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:0".parse().unwrap();
        assert!(keep_public("rebind.example", vec![private]).is_err());
        assert_eq!(
            keep_public("mixed.example", vec![private, public]).unwrap(),
            vec![public]
        );
    }

    #[tokio::test]
    async fn public_literals_and_unresolvable_names_pass_the_change_check() {
        for raw in [
            "https://93.184.216.34/hook",
            "https://[2606:4700:4700::1111]/",
            // Not resolvable here: accepted, and checked again at every delivery.
            "https://hooks.invalid/x",
        ] {
            let url = url::Url::parse(raw).unwrap();
            assert!(vet_url(&url).await.is_ok(), "{raw}");
        }
    }
}
