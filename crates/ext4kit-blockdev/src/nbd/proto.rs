//! Wire format of the NBD protocol (constants, the handshake) and the transport.
//!
//! Facts from the protocol document of the NBD project (`doc/proto.md`). Everything read from
//! the server is checked; a server that breaks the protocol gets [`NbdErrorKind::Protocol`],
//! never a panic.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{NbdErrorKind, NbdHandshake};

// Handshake.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;
pub(crate) const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(crate) const FLAG_C_NO_ZEROES: u32 = 1 << 1;

pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;

pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_ERR_BIT: u32 = 1 << 31;
pub(crate) const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub(crate) const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;
pub(crate) const REP_ERR_SHUTDOWN: u32 = REP_ERR_BIT | 7;

pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_NAME: u16 = 1;
pub(crate) const INFO_DESCRIPTION: u16 = 2;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub(crate) const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub(crate) const FLAG_READ_ONLY: u16 = 1 << 1;
pub(crate) const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const FLAG_SEND_FUA: u16 = 1 << 3;
pub(crate) const FLAG_SEND_TRIM: u16 = 1 << 5;
pub(crate) const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Transmission.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;

pub(crate) const CMD_FLAG_FUA: u16 = 1 << 0;

pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub(crate) const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// Longest string (export name, message) the protocol allows.
pub(crate) const MAX_STRING: usize = 4096;
/// Largest read/write payload a client should send when the server states no maximum.
pub(crate) const DEFAULT_MAX_PAYLOAD: u32 = 1 << 25;

/// A command's name for messages.
pub(crate) fn cmd_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write-zeroes",
        _ => "command",
    }
}

/// The errno (of this system) for an NBD error value. Values outside the protocol's list are
/// treated as `EINVAL`, as the protocol asks; zero (not an error, but sent in an error chunk)
/// becomes `EIO`.
pub(crate) fn errno_of(nbd_error: u32) -> i32 {
    match nbd_error {
        0 => libc::EIO,
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        _ => libc::EINVAL,
    }
}

/// The name of an option reply error for messages.
pub(crate) fn rep_err_name(rep: u32) -> &'static str {
    match rep {
        REP_ERR_UNSUP => "option not supported",
        x if x == REP_ERR_BIT | 2 => "forbidden by server policy",
        x if x == REP_ERR_BIT | 3 => "invalid option",
        x if x == REP_ERR_BIT | 4 => "not supported on the server's platform",
        REP_ERR_TLS_REQD => "the server requires TLS",
        x if x == REP_ERR_BIT | 6 => "no such export",
        REP_ERR_SHUTDOWN => "the server is shutting down",
        x if x == REP_ERR_BIT | 8 => "block size constraints required",
        x if x == REP_ERR_BIT | 9 => "request too big",
        _ => "error",
    }
}

/// A connected socket, TCP or Unix.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            #[cfg(unix)]
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) {
        // Errors (already shut down, not connected) leave nothing to do.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    pub(crate) fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads big-endian integers; end of stream is `UnexpectedEof`.
pub(crate) trait ReadBe: Read {
    fn be_u16(&mut self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn be_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn be_u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    /// Reads and drops `n` bytes.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut self.take(n), &mut io::sink())?;
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

impl<R: Read + ?Sized> ReadBe for R {}

/// The 28-byte header of a request.
pub(crate) fn request_header(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&cmd.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// What the handshake settled.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
    /// `(minimum, preferred, maximum)` if the server sent `NBD_INFO_BLOCK_SIZE`.
    pub block_sizes: Option<(u32, u32, u32)>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub handshake: NbdHandshake,
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> NbdErrorKind {
    move |source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            NbdErrorKind::Closed { context }
        } else {
            NbdErrorKind::Io { context, source }
        }
    }
}

fn protocol(msg: impl Into<String>) -> NbdErrorKind {
    NbdErrorKind::Protocol(msg.into())
}

fn send_option(s: &mut Stream, opt: u32, data: &[u8]) -> Result<(), NbdErrorKind> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).map_err(io_err("sending an option"))
}

/// One option reply: `(reply type, data)`. Data beyond 64 KiB is a protocol error (no reply we
/// ask for comes near it).
fn read_option_reply(s: &mut Stream, opt: u32) -> Result<(u32, Vec<u8>), NbdErrorKind> {
    let magic = s.be_u64().map_err(io_err("reading an option reply"))?;
    if magic != OPT_REPLY_MAGIC {
        return Err(protocol(format!("bad option reply magic {magic:#x}")));
    }
    let got_opt = s.be_u32().map_err(io_err("reading an option reply"))?;
    let rep = s.be_u32().map_err(io_err("reading an option reply"))?;
    let len = s.be_u32().map_err(io_err("reading an option reply"))?;
    if got_opt != opt {
        return Err(protocol(format!(
            "reply to option {got_opt} while option {opt} was asked"
        )));
    }
    if len > 64 << 10 {
        return Err(protocol(format!("option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)
        .map_err(io_err("reading an option reply"))?;
    Ok((rep, data))
}

fn lossy(b: &[u8]) -> String {
    let b = &b[..b.len().min(MAX_STRING)];
    String::from_utf8_lossy(b).into_owned()
}

/// An option the server refused with an error reply.
fn refused(rep: u32, data: &[u8]) -> NbdErrorKind {
    if rep == REP_ERR_TLS_REQD {
        return NbdErrorKind::Unsupported(
            "the server requires TLS, which this client does not speak yet".into(),
        );
    }
    NbdErrorKind::Refused {
        reason: rep_err_name(rep),
        message: lossy(data),
    }
}

/// Runs the handshake on a fresh connection: fixed newstyle with `NBD_OPT_STRUCTURED_REPLY`
/// (if `want_structured`) and `NBD_OPT_GO` asking for block sizes, falling back to
/// `NBD_OPT_EXPORT_NAME` for servers without `NBD_OPT_GO`; plain newstyle and oldstyle servers
/// are accepted too.
pub(crate) fn handshake(
    s: &mut Stream,
    export: &str,
    want_structured: bool,
) -> Result<Negotiated, NbdErrorKind> {
    if export.len() > MAX_STRING {
        return Err(NbdErrorKind::InvalidOptions(format!(
            "export name of {} bytes (at most {MAX_STRING})",
            export.len()
        )));
    }
    let magic = s.be_u64().map_err(io_err("reading the server greeting"))?;
    if magic != NBDMAGIC {
        return Err(protocol(format!(
            "not an NBD server (greeting {magic:#018x})"
        )));
    }
    let style = s.be_u64().map_err(io_err("reading the server greeting"))?;
    if style == CLISERV_MAGIC {
        // Oldstyle: the server names the (only) export at once.
        let size = s
            .be_u64()
            .map_err(io_err("reading the oldstyle greeting"))?;
        let flags = s
            .be_u32()
            .map_err(io_err("reading the oldstyle greeting"))?;
        s.skip(124)
            .map_err(io_err("reading the oldstyle greeting"))?;
        return Ok(Negotiated {
            size,
            flags: (flags & 0xffff) as u16,
            structured: false,
            block_sizes: None,
            name: None,
            description: None,
            handshake: NbdHandshake::Oldstyle,
        });
    }
    if style != IHAVEOPT {
        return Err(protocol(format!("unknown handshake magic {style:#018x}")));
    }
    let hflags = s.be_u16().map_err(io_err("reading the handshake flags"))?;
    let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= FLAG_C_NO_ZEROES;
    }
    s.write_all(&cflags.to_be_bytes())
        .map_err(io_err("sending the client flags"))?;

    let mut structured = false;
    if fixed {
        if want_structured {
            send_option(s, OPT_STRUCTURED_REPLY, &[])?;
            let (rep, data) = read_option_reply(s, OPT_STRUCTURED_REPLY)?;
            match rep {
                REP_ACK => structured = true,
                REP_ERR_SHUTDOWN => return Err(refused(rep, &data)),
                // Any other refusal: simple replies it is.
                r if r & REP_ERR_BIT != 0 => {}
                r => {
                    return Err(protocol(format!("reply {r} to NBD_OPT_STRUCTURED_REPLY")));
                }
            }
        }
        match go(s, export)? {
            Some(mut n) => {
                n.structured = structured;
                return Ok(n);
            }
            None => {
                // NBD_OPT_GO unknown: an old server, fall back to NBD_OPT_EXPORT_NAME.
            }
        }
    }
    send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
    let size = s.be_u64().map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => NbdErrorKind::Refused {
            reason: "the server closed the connection (no such export?)",
            message: String::new(),
        },
        _ => NbdErrorKind::Io {
            context: "reading the export",
            source: e,
        },
    })?;
    let flags = s.be_u16().map_err(io_err("reading the export flags"))?;
    if !no_zeroes {
        s.skip(124).map_err(io_err("reading the export"))?;
    }
    Ok(Negotiated {
        size,
        flags,
        structured,
        block_sizes: None,
        name: None,
        description: None,
        handshake: if fixed {
            NbdHandshake::FixedNewstyleExportName
        } else {
            NbdHandshake::NewstyleExportName
        },
    })
}

/// `NBD_OPT_GO`; `None` if the server does not know the option.
fn go(s: &mut Stream, export: &str) -> Result<Option<Negotiated>, NbdErrorKind> {
    let mut data = Vec::with_capacity(export.len() + 8);
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &data)?;
    let mut export_info: Option<(u64, u16)> = None;
    let mut block_sizes = None;
    let mut name = None;
    let mut description = None;
    loop {
        let (rep, d) = read_option_reply(s, OPT_GO)?;
        match rep {
            REP_INFO => {
                if d.len() < 2 {
                    return Err(protocol("NBD_REP_INFO without an information type"));
                }
                let ty = u16::from_be_bytes([d[0], d[1]]);
                let p = &d[2..];
                match ty {
                    INFO_EXPORT => {
                        let (Some(size), Some(flags)) = (be64(p, 0), be16(p, 8)) else {
                            return Err(protocol("short NBD_INFO_EXPORT"));
                        };
                        export_info = Some((size, flags));
                    }
                    INFO_BLOCK_SIZE => {
                        let (Some(min), Some(pref), Some(max)) =
                            (be32(p, 0), be32(p, 4), be32(p, 8))
                        else {
                            return Err(protocol("short NBD_INFO_BLOCK_SIZE"));
                        };
                        block_sizes = Some((min, pref, max));
                    }
                    INFO_NAME => name = Some(lossy(p)),
                    INFO_DESCRIPTION => description = Some(lossy(p)),
                    _ => {} // unknown information: ignored, as the protocol says
                }
            }
            REP_ACK => {
                let Some((size, flags)) = export_info else {
                    return Err(protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"));
                };
                return Ok(Some(Negotiated {
                    size,
                    flags,
                    structured: false,
                    block_sizes,
                    name,
                    description,
                    handshake: NbdHandshake::FixedNewstyleGo,
                }));
            }
            REP_ERR_UNSUP => return Ok(None),
            r if r & REP_ERR_BIT != 0 => {
                // Leave politely before giving up (the server may close first).
                let _ = send_option(s, OPT_ABORT, &[]);
                return Err(refused(r, &d));
            }
            r => return Err(protocol(format!("reply type {r} to NBD_OPT_GO"))),
        }
    }
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
}
fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}
fn be64(p: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?))
}
