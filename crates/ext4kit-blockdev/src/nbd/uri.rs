//! NBD URIs (the format of the NBD project's `doc/uri.md`, which qemu and libnbd use):
//! `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`.
//!
//! - The export name is the path without its leading `/`, percent-decoded:
//!   `nbd://h/disk` is `disk`, `nbd://h` and `nbd://h/` the empty (default) export, `nbd://h//x`
//!   is `/x`, `nbd://h/a%20b` is `a b`.
//! - The host may be a name, an IPv4 address or a bracketed IPv6 literal (`[::1]`); an empty
//!   host means `localhost`; the port defaults to 10809. A user (`user@`) is accepted and
//!   ignored (it only matters for TLS).
//! - `nbd+unix` takes the socket from the `socket` query parameter (percent-decoded, any bytes;
//!   a leading NUL names a Linux abstract socket) and must have no host.
//! - `tls-*` parameters are ignored (no TLS is negotiated), `x-*` ones too; any other parameter
//!   is an error, as is a fragment. `nbds` and `nbds+unix` (TLS required) are refused: this
//!   client does not speak TLS yet.
//! - Characters outside the URI alphabet are taken literally (a path with a space works), except
//!   ASCII control characters, which are refused.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The port IANA assigned to NBD.
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdAddress {
    /// TCP: a host name or IP address (IPv6 without brackets) and a port.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix-domain socket; a path starting with a NUL byte names a Linux abstract socket.
    #[cfg(unix)]
    Unix(PathBuf),
}

/// What to connect to: a server address and an export name (a connect spec).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NbdTarget {
    /// The server.
    pub address: NbdAddress,
    /// The export name (empty: the server's default export).
    pub export: String,
}

/// Why a string is not a usable NBD URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NBD URI {uri:?}: {reason}")]
pub struct NbdUriError {
    /// The URI as given.
    pub uri: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether `s` looks like an NBD URI (starts with one of the NBD schemes and `://`), so that a
/// caller can tell it from a file name before parsing it.
pub fn is_nbd_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "nbd" | "nbd+unix" | "nbds" | "nbds+unix" | "nbd+tcp" | "nbd+vsock" | "nbds+vsock"
    )
}

/// Parses an NBD URI (see the module documentation for the accepted forms).
pub fn parse_nbd_uri(uri: &str) -> Result<NbdTarget, NbdUriError> {
    let err = |reason: &str| NbdUriError {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    if let Some(c) = uri.chars().find(|c| c.is_ascii_control()) {
        return Err(err(&format!("control character {c:?} (percent-encode it)")));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(err("expected SCHEME://... (nbd:// or nbd+unix://)"));
    };
    let unix = match scheme.to_ascii_lowercase().as_str() {
        "nbd" | "nbd+tcp" => false,
        "nbd+unix" => true,
        "nbds" | "nbds+unix" => {
            return Err(err("TLS (nbds) is not supported by this client yet"));
        }
        "nbd+vsock" | "nbds+vsock" => return Err(err("vsock is not supported")),
        _ => return Err(err("the scheme is not nbd or nbd+unix")),
    };
    if rest.contains('#') {
        return Err(err("a fragment (#...) has no meaning in an NBD URI"));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let export_bytes =
        percent_decode(path.strip_prefix('/').unwrap_or(path)).map_err(|r| err(&r))?;
    let export =
        String::from_utf8(export_bytes).map_err(|_| err("the export name is not UTF-8"))?;
    if export.contains('\0') {
        return Err(err("the export name contains a NUL byte"));
    }
    if export.len() > super::proto::MAX_STRING {
        return Err(err("the export name is longer than 4096 bytes"));
    }

    let mut socket: Option<Vec<u8>> = None;
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        let k = String::from_utf8(percent_decode(k).map_err(|r| err(&r))?)
            .map_err(|_| err("a query parameter name is not UTF-8"))?;
        match k.as_str() {
            "socket" => {
                if !unix {
                    return Err(err("socket= belongs to nbd+unix:// URIs"));
                }
                if socket.is_some() {
                    return Err(err("socket= given twice"));
                }
                let v = percent_decode(v).map_err(|r| err(&r))?;
                if v.is_empty() {
                    return Err(err("socket= is empty"));
                }
                socket = Some(v);
            }
            k if k.starts_with("tls-") || k.starts_with("x-") => {}
            k => return Err(err(&format!("unknown query parameter {k:?}"))),
        }
    }

    // Authority: [userinfo@]host[:port].
    let hostport = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    if unix {
        if !hostport.is_empty() {
            return Err(err(
                "an nbd+unix URI names no host (nbd+unix:///EXPORT?socket=PATH)",
            ));
        }
        let Some(socket) = socket else {
            return Err(err("nbd+unix needs ?socket=PATH"));
        };
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            return Ok(NbdTarget {
                address: NbdAddress::Unix(PathBuf::from(std::ffi::OsString::from_vec(socket))),
                export,
            });
        }
        #[cfg(not(unix))]
        {
            let _ = socket;
            return Err(err("Unix-domain sockets are not available on this system"));
        }
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some((lit, after)) = inner.split_once(']') else {
            return Err(err("unterminated [IPv6 address]"));
        };
        // A zone is written %25zone inside the brackets (RFC 6874).
        let (addr, zone) = match lit.split_once("%25") {
            Some((a, z)) => (a, Some(z)),
            None => (lit, None),
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(&format!("{addr:?} is not an IPv6 address")));
        }
        let host = match zone {
            Some(z) if !z.is_empty() => {
                let z = String::from_utf8(percent_decode(z).map_err(|r| err(&r))?)
                    .map_err(|_| err("the IPv6 zone is not UTF-8"))?;
                format!("{addr}%{z}")
            }
            Some(_) => return Err(err("empty IPv6 zone")),
            None => addr.to_string(),
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(err("junk after the ]")),
            },
        };
        (host, port)
    } else {
        let (h, p) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let h = String::from_utf8(percent_decode(h).map_err(|r| err(&r))?)
            .map_err(|_| err("the host name is not UTF-8"))?;
        if h.contains(['/', '\0', '[', ']']) {
            return Err(err("bad host name"));
        }
        (
            if h.is_empty() {
                "localhost".to_string()
            } else {
                h
            },
            p,
        )
    };
    let port = match port {
        None | Some("") => NBD_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(err(&format!("bad port {p:?}"))),
        },
    };
    Ok(NbdTarget {
        address: NbdAddress::Tcp { host, port },
        export,
    })
}

/// Decodes `%XX` escapes; a `%` without two hex digits is an error.
fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => return Err(format!("bad percent escape at byte {i}")),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encodes `b`, keeping the unreserved characters and those in `keep`.
fn percent_encode(b: &[u8], keep: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) || keep.contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

impl NbdTarget {
    /// A TCP target.
    pub fn tcp(host: impl Into<String>, port: u16, export: impl Into<String>) -> NbdTarget {
        NbdTarget {
            address: NbdAddress::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    /// A Unix-socket target.
    #[cfg(unix)]
    pub fn unix(socket: impl Into<PathBuf>, export: impl Into<String>) -> NbdTarget {
        NbdTarget {
            address: NbdAddress::Unix(socket.into()),
            export: export.into(),
        }
    }

    /// The target as an NBD URI (parses back to the same target).
    pub fn to_uri(&self) -> String {
        let export = percent_encode(self.export.as_bytes(), b"/:@!$&'()*+,;=");
        match &self.address {
            NbdAddress::Tcp { host, port } => {
                let host = if host.contains(':') {
                    match host.split_once('%') {
                        Some((a, z)) => format!("[{a}%25{}]", percent_encode(z.as_bytes(), b"")),
                        None => format!("[{host}]"),
                    }
                } else {
                    percent_encode(host.as_bytes(), b"!$&'()*+,;=")
                };
                if *port == NBD_DEFAULT_PORT {
                    format!("nbd://{host}/{export}")
                } else {
                    format!("nbd://{host}:{port}/{export}")
                }
            }
            #[cfg(unix)]
            NbdAddress::Unix(p) => {
                use std::os::unix::ffi::OsStrExt;
                let sock = percent_encode(p.as_os_str().as_bytes(), b"/:@!$'()*+,;");
                format!("nbd+unix:///{export}?socket={sock}")
            }
        }
    }
}

impl FromStr for NbdTarget {
    type Err = NbdUriError;
    fn from_str(s: &str) -> Result<NbdTarget, NbdUriError> {
        parse_nbd_uri(s)
    }
}

impl fmt::Display for NbdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdTarget {
        NbdTarget::tcp(host, port, export)
    }

    #[test]
    fn export_names_follow_the_uri_spec_table() {
        let p = |s: &str| parse_nbd_uri(s).map(|t| t.export);
        assert_eq!(p("nbd://example.com/disk").as_deref(), Ok("disk"));
        assert_eq!(p("nbd+unix:///disk?socket=sock").as_deref(), Ok("disk"));
        assert_eq!(p("nbd://example.com/").as_deref(), Ok(""));
        assert_eq!(p("nbd://example.com").as_deref(), Ok(""));
        assert_eq!(p("nbd://example.com//disk").as_deref(), Ok("/disk"));
        assert_eq!(
            p("nbd://example.com/hello%20world").as_deref(),
            Ok("hello world")
        );
        assert_eq!(p("nbd://example.com/%C3%A9t%C3%A9").as_deref(), Ok("été"));
        assert_eq!(p("nbd://example.com/a/b%2Fc").as_deref(), Ok("a/b/c"));
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            parse_nbd_uri("nbd://example.com/disk"),
            Ok(tcp("example.com", 10809, "disk"))
        );
        assert_eq!(
            parse_nbd_uri("nbd://10.0.0.1:10810/x"),
            Ok(tcp("10.0.0.1", 10810, "x"))
        );
        assert_eq!(parse_nbd_uri("nbd://[::1]/x"), Ok(tcp("::1", 10809, "x")));
        assert_eq!(parse_nbd_uri("nbd://[::1]:1234"), Ok(tcp("::1", 1234, "")));
        assert_eq!(
            parse_nbd_uri("nbd://[fe80::1%25eth0]:99/"),
            Ok(tcp("fe80::1%eth0", 99, ""))
        );
        assert_eq!(parse_nbd_uri("nbd://host:/x"), Ok(tcp("host", 10809, "x")));
        assert_eq!(parse_nbd_uri("nbd:///x"), Ok(tcp("localhost", 10809, "x")));
        assert_eq!(
            parse_nbd_uri("nbd://user@host:7/x"),
            Ok(tcp("host", 7, "x"))
        );
        assert_eq!(parse_nbd_uri("NBD://Host/X"), Ok(tcp("Host", 10809, "X")));
        assert_eq!(
            parse_nbd_uri("nbd://host/x?tls-type=anon&x-foo=1"),
            Ok(tcp("host", 10809, "x"))
        );
    }

    #[test]
    fn unix_sockets() {
        assert_eq!(
            parse_nbd_uri("nbd+unix:///export?socket=/tmp/s.sock"),
            Ok(NbdTarget::unix("/tmp/s.sock", "export"))
        );
        assert_eq!(
            parse_nbd_uri("nbd+unix:///?socket=%2Ftmp%2Fa%20b.sock"),
            Ok(NbdTarget::unix("/tmp/a b.sock", ""))
        );
        assert_eq!(
            parse_nbd_uri("nbd+unix://?socket=rel.sock"),
            Ok(NbdTarget::unix("rel.sock", ""))
        );
        assert_eq!(
            parse_nbd_uri("nbd+unix:///?socket=/run/x.sock&x-y=z"),
            Ok(NbdTarget::unix("/run/x.sock", ""))
        );
        assert_eq!(
            parse_nbd_uri("nbd+unix:///?socket=%00abstract"),
            Ok(NbdTarget::unix("\0abstract", ""))
        );
        // Raw characters outside the URI alphabet are taken literally.
        assert_eq!(
            parse_nbd_uri("nbd+unix:///e?socket=/tmp/my dir/s"),
            Ok(NbdTarget::unix("/tmp/my dir/s", "e"))
        );
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for bad in [
            "nbd:host/x",
            "http://host/x",
            "nbds://host/x",
            "nbds+unix:///x?socket=/s",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=",
            "nbd+unix://host/x?socket=/s",
            "nbd+unix:///x?socket=/a&socket=/b",
            "nbd://host/x?socket=/s",
            "nbd://host/x?foo=1",
            "nbd://host/x#frag",
            "nbd://host:abc/x",
            "nbd://host:99999/x",
            "nbd://host:0/x",
            "nbd://host:+1/x",
            "nbd://[::1/x",
            "nbd://[::1]x/",
            "nbd://[not:v6]/",
            "nbd://[::1%25]/",
            "nbd://host/%zz",
            "nbd://host/%2",
            "nbd://host/a%00b",
            "nbd://host/%ff",
            "nbd://host/a\nb",
        ] {
            let e = parse_nbd_uri(bad).expect_err(bad);
            assert!(!e.reason.is_empty());
            assert!(e.to_string().contains("invalid NBD URI"), "{e}");
        }
        let long = format!("nbd://h/{}", "a".repeat(4097));
        assert!(parse_nbd_uri(&long).is_err());
    }

    #[test]
    fn targets_print_as_uris_that_parse_back() {
        for t in [
            tcp("example.com", 10809, "disk"),
            tcp("::1", 1234, "a b/c%d"),
            tcp("fe80::1%eth0", 10809, ""),
            tcp("h", 1, "été?#&"),
            NbdTarget::unix("/tmp/a b&c=d?.sock", "x y"),
            NbdTarget::unix("\0abs", ""),
        ] {
            let uri = t.to_uri();
            assert_eq!(parse_nbd_uri(&uri), Ok(t.clone()), "{uri}");
            assert_eq!(uri.parse::<NbdTarget>(), Ok(t));
        }
        assert_eq!(tcp("h", 10809, "x").to_string(), "nbd://h/x");
        assert_eq!(tcp("::1", 5, "x").to_string(), "nbd://[::1]:5/x");
    }

    #[test]
    fn nbd_uris_are_told_from_file_names() {
        assert!(is_nbd_uri("nbd://h/x"));
        assert!(is_nbd_uri("NBD+UNIX:///?socket=/s"));
        assert!(is_nbd_uri("nbds://h/"));
        assert!(!is_nbd_uri("disk.img"));
        assert!(!is_nbd_uri("/tmp/nbd://x"));
        assert!(!is_nbd_uri("nbd:x"));
    }
}
