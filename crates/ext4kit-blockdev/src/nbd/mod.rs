//! [`NbdDevice`]: a block device on an export of an NBD server (`qemu-nbd`, `nbdkit`,
//! `nbd-server`, `rbd-nbd`, ...), through a client of our own for the NBD protocol, over TCP or
//! a Unix-domain socket — no kernel NBD module, no `/dev/nbd*`, no root.
//!
//! ```no_run
//! use ext4kit_blockdev::{BlockDeviceExt, NbdDevice, NbdOptions};
//! let dev = NbdDevice::open("nbd+unix:///?socket=/run/disk.sock", &NbdOptions::default())?;
//! let mut sb = vec![0u8; 1024];
//! dev.read_blocks(2, &mut sb)?; // 512-byte device blocks by default
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Names
//! Servers are named by NBD URIs ([`parse_nbd_uri`], [`NbdTarget`]):
//! `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`, as qemu and libnbd write
//! them (see the [`uri`](parse_nbd_uri) rules for the edge cases).
//!
//! # Handshake
//! Fixed newstyle: `NBD_OPT_STRUCTURED_REPLY` (unless [`NbdOptions::structured_replies`] is
//! off; a server that refuses gets simple replies), then `NBD_OPT_GO` with the export name,
//! asking for `NBD_INFO_BLOCK_SIZE`. The device then obeys the server's minimum block size
//! (the device block size must be a multiple of it) and maximum payload (larger bios are split).
//! A server without `NBD_OPT_GO` gets `NBD_OPT_EXPORT_NAME`; plain-newstyle and oldstyle servers
//! work too. The transmission flags say what the export can do ([`NbdInfo`]): a read-only
//! export makes [`NbdDevice::is_read_only`] (and [`BlockDevice::is_read_only`]) true and every
//! write fail with EROFS at once, so the filesystem can open it read-only; FLUSH is sent only
//! if offered (else a flush completes at once: nothing to make durable); FUA, TRIM,
//! WRITE_ZEROES likewise ([`NbdDevice::submit_fua`], [`NbdDevice::trim`],
//! [`NbdDevice::write_zeroes`]); several connections are opened only when the server says
//! `CAN_MULTI_CONN` ([`NbdOptions::connections`]).
//!
//! # Pipelining
//! A round trip costs far more than a 4 KiB transfer, so a request at a time would be slow;
//! the device keeps many requests in flight on each connection:
//!
//! - **`submit`** (any thread) turns the bio into requests — one per bio, or several when the
//!   bio exceeds the maximum payload, the pieces completing the bio together — gives each a
//!   fresh *cookie* and enters it in the connection's in-flight table, then hands it to the
//!   writer through a channel and returns. It never waits for IO; it waits only when the
//!   in-flight window is full ([`NbdOptions::max_in_flight`] requests or
//!   [`NbdOptions::max_in_flight_bytes`] of payload), until a reply frees a slot.
//! - **The writer thread** sends requests in order (header, and the payload of a write taken
//!   straight from the bio's segments) through a buffered socket writer that is flushed when
//!   the queue runs dry, so a burst of small requests goes out in a few system calls.
//! - **The reader thread** reads replies as the server sends them — in any order, simple or
//!   structured (data chunks at any offset of the request, holes, error chunks with messages)
//!   — finds the request by cookie, reads the data straight into the bio's segments, and when
//!   the last piece of a bio is answered completes the bio (its end function runs on this
//!   thread). An end function may submit again: on the reader thread `submit` never waits for
//!   the window (it would wait for itself).
//! - **The watchdog thread** fails the connection when the oldest request has had no reply for
//!   [`NbdOptions::request_timeout`].
//!
//! # Faults
//! A dropped connection, a dead server, a request that times out, or a server that breaks the
//! protocol (a reply to an unknown cookie, a bad magic, a chunk outside its request — checked,
//! never trusted, never a panic) make the connection *dead*: the socket is shut down, every
//! request in flight fails with EIO, and every later bio fails at once with EIO
//! ([`NbdDevice::failure`] says why). A server's error reply fails just its bio, with the
//! errno the server sent (EIO, EPERM, ENOSPC, EINVAL, ...); the server's message, naming the
//! request, is kept ([`NbdDevice::last_error_message`]). Dropping the device waits for what is
//! in flight (bounded by the timeout), then sends `NBD_CMD_DISC`.

mod conn;
mod proto;
mod uri;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub use uri::{NBD_DEFAULT_PORT, NbdAddress, NbdTarget, NbdUriError, is_nbd_uri, parse_nbd_uri};

use crate::{Bio, BioBuf, BioOp, BioVec, BlockDevice, Geometry, IoError};
use conn::{Conn, ConnParams, Ctx, Piece, Target};
use proto::Stream;

/// How to connect and how much to keep in flight.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Bytes per device block (the unit of [`Bio::start_block`]): a power of two, a multiple of
    /// the export's minimum block size. Default 512.
    pub block_size: u32,
    /// A request without a reply for this long fails the connection (and with it every bio in
    /// flight, with EIO). Default 30 s.
    pub request_timeout: Duration,
    /// Limit for connecting and for the handshake. Default 30 s.
    pub connect_timeout: Duration,
    /// Most requests in flight per connection. Default 128.
    pub max_in_flight: usize,
    /// Most payload bytes (reads and writes) in flight per connection; keeps the queue short
    /// enough that the timeout measures the server, not the link. Default 64 MiB.
    pub max_in_flight_bytes: u64,
    /// Largest request; the server's maximum payload lowers it. Default 32 MiB.
    pub max_request_bytes: u32,
    /// Ask for structured replies (`NBD_OPT_STRUCTURED_REPLY`). Default on.
    pub structured_replies: bool,
    /// Connections to open when the server allows several (`CAN_MULTI_CONN`); bios are spread
    /// over them. Default 1.
    pub connections: usize,
    /// Treat the export as read-only even if the server allows writes. Default off.
    pub read_only: bool,
}

impl Default for NbdOptions {
    fn default() -> NbdOptions {
        NbdOptions {
            block_size: 512,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_in_flight: 128,
            max_in_flight_bytes: 64 << 20,
            max_request_bytes: 32 << 20,
            structured_replies: true,
            connections: 1,
            read_only: false,
        }
    }
}

/// How the handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NbdHandshake {
    /// Fixed newstyle with `NBD_OPT_GO` (the modern path).
    FixedNewstyleGo,
    /// Fixed newstyle, but the server knew no `NBD_OPT_GO`: `NBD_OPT_EXPORT_NAME`.
    FixedNewstyleExportName,
    /// Plain (non-fixed) newstyle: `NBD_OPT_EXPORT_NAME` only.
    NewstyleExportName,
    /// Oldstyle: the server sent its only export unasked.
    Oldstyle,
}

/// What the server said about the export.
#[derive(Debug, Clone)]
pub struct NbdInfo {
    /// The export name asked for.
    pub export: String,
    /// The server's canonical name for it (`NBD_INFO_NAME`), if sent.
    pub canonical_name: Option<String>,
    /// The server's description (`NBD_INFO_DESCRIPTION`), if sent.
    pub description: Option<String>,
    /// Size of the export in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// How the handshake went.
    pub handshake: NbdHandshake,
    /// Whether replies are structured.
    pub structured_replies: bool,
    /// Whether the server sent `NBD_INFO_BLOCK_SIZE` (else the protocol's defaults below).
    pub block_sizes_advertised: bool,
    /// Minimum block size (alignment of every request).
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Maximum payload of one request.
    pub max_payload: u32,
    /// Largest request this device sends (bios beyond it are split).
    pub max_request: u32,
    /// Connections open.
    pub connections: usize,
}

impl NbdInfo {
    fn flag(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    /// The server refuses writes (`NBD_FLAG_READ_ONLY`).
    pub fn read_only(&self) -> bool {
        self.flag(proto::FLAG_READ_ONLY)
    }
    /// `NBD_FLAG_SEND_FLUSH`.
    pub fn can_flush(&self) -> bool {
        self.flag(proto::FLAG_SEND_FLUSH)
    }
    /// `NBD_FLAG_SEND_FUA`.
    pub fn can_fua(&self) -> bool {
        self.flag(proto::FLAG_SEND_FUA)
    }
    /// `NBD_FLAG_SEND_TRIM`.
    pub fn can_trim(&self) -> bool {
        self.flag(proto::FLAG_SEND_TRIM)
    }
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub fn can_write_zeroes(&self) -> bool {
        self.flag(proto::FLAG_SEND_WRITE_ZEROES)
    }
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub fn can_multi_conn(&self) -> bool {
        self.flag(proto::FLAG_CAN_MULTI_CONN)
    }
}

/// Why connecting to an NBD server failed.
#[derive(Debug, thiserror::Error)]
#[error("NBD server {target}: {kind}")]
pub struct NbdError {
    /// The server (a URI).
    pub target: String,
    /// What went wrong.
    pub kind: NbdErrorKind,
}

/// What went wrong connecting (see [`NbdError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdErrorKind {
    /// The URI does not parse.
    #[error("{0}")]
    Uri(#[from] NbdUriError),
    /// The socket could not be connected.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The connection failed during the handshake.
    #[error("{context}: {source}")]
    Io {
        /// What the client was doing.
        context: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The server closed the connection during the handshake.
    #[error("the server closed the connection while {context}")]
    Closed {
        /// What the client was doing.
        context: &'static str,
    },
    /// The server does not speak the protocol as documented.
    #[error("the server broke the NBD protocol: {0}")]
    Protocol(String),
    /// The server refused the export (no such export, policy, shutting down, ...).
    #[error("the server refused the export: {reason}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        /// The refusal.
        reason: &'static str,
        /// The server's message.
        message: String,
    },
    /// The server needs something this client does not do (TLS, ...).
    #[error("{0}")]
    Unsupported(String),
    /// The options do not fit the export.
    #[error("{0}")]
    InvalidOptions(String),
}

impl From<NbdError> for io::Error {
    fn from(e: NbdError) -> io::Error {
        let kind = match &e.kind {
            NbdErrorKind::Connect(s) | NbdErrorKind::Io { source: s, .. } => s.kind(),
            NbdErrorKind::Closed { .. } => io::ErrorKind::ConnectionAborted,
            NbdErrorKind::Refused { .. } => io::ErrorKind::NotFound,
            NbdErrorKind::Unsupported(_) => io::ErrorKind::Unsupported,
            NbdErrorKind::Uri(_) | NbdErrorKind::InvalidOptions(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// A block device on an NBD export (see the [module documentation](self)).
#[derive(Debug)]
pub struct NbdDevice {
    conns: Vec<Conn>,
    next: AtomicUsize,
    info: NbdInfo,
    geo: Geometry,
    read_only: bool,
    broken: Arc<AtomicBool>,
    last_message: Arc<Mutex<Option<String>>>,
    target: String,
}

/// A zero buffer for emulated WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

impl NbdDevice {
    /// Connects to the server named by an NBD URI.
    pub fn open(uri: &str, opts: &NbdOptions) -> Result<NbdDevice, NbdError> {
        let target = parse_nbd_uri(uri).map_err(|e| NbdError {
            target: uri.to_string(),
            kind: e.into(),
        })?;
        NbdDevice::connect(&target, opts)
    }

    /// Connects to `target`.
    pub fn connect(target: &NbdTarget, opts: &NbdOptions) -> Result<NbdDevice, NbdError> {
        let name = target.to_uri();
        let err = |kind| NbdError {
            target: name.clone(),
            kind,
        };
        let first = connect_stream(&target.address, opts.connect_timeout).map_err(err)?;
        NbdDevice::establish(first, &target.export, opts, &name, &mut || {
            connect_stream(&target.address, opts.connect_timeout)
        })
    }

    /// Runs the handshake on a connected Unix-domain socket (one connection).
    #[cfg(unix)]
    pub fn from_unix_stream(
        stream: UnixStream,
        export: &str,
        opts: &NbdOptions,
    ) -> Result<NbdDevice, NbdError> {
        let opts = NbdOptions {
            connections: 1,
            ..opts.clone()
        };
        NbdDevice::establish(
            Stream::Unix(stream),
            export,
            &opts,
            "(unix stream)",
            &mut || Err(NbdErrorKind::InvalidOptions("one connection".into())),
        )
    }

    /// Runs the handshake on a connected TCP socket (one connection).
    pub fn from_tcp_stream(
        stream: TcpStream,
        export: &str,
        opts: &NbdOptions,
    ) -> Result<NbdDevice, NbdError> {
        let opts = NbdOptions {
            connections: 1,
            ..opts.clone()
        };
        let _ = stream.set_nodelay(true);
        NbdDevice::establish(
            Stream::Tcp(stream),
            export,
            &opts,
            "(tcp stream)",
            &mut || Err(NbdErrorKind::InvalidOptions("one connection".into())),
        )
    }

    fn establish(
        first: Stream,
        export: &str,
        opts: &NbdOptions,
        name: &str,
        more: &mut dyn FnMut() -> Result<Stream, NbdErrorKind>,
    ) -> Result<NbdDevice, NbdError> {
        let err = |kind| NbdError {
            target: name.to_string(),
            kind,
        };
        let bs = opts.block_size;
        if !bs.is_power_of_two() {
            return Err(err(NbdErrorKind::InvalidOptions(format!(
                "device block size {bs} is not a power of two"
            ))));
        }
        let neg = negotiate(&first, export, opts).map_err(err)?;
        let flags = if neg.flags & proto::FLAG_HAS_FLAGS != 0 {
            neg.flags
        } else {
            0
        };
        let advertised = neg.block_sizes.is_some();
        let (min, pref, max) = neg
            .block_sizes
            .unwrap_or((1, 4096, proto::DEFAULT_MAX_PAYLOAD));
        if !min.is_power_of_two() || min > 1 << 16 || max < min {
            return Err(err(NbdErrorKind::Protocol(format!(
                "bad block size constraints: minimum {min}, preferred {pref}, maximum {max}"
            ))));
        }
        if bs < min {
            return Err(err(NbdErrorKind::InvalidOptions(format!(
                "device block size {bs} is below the export's minimum block size {min}"
            ))));
        }
        let max_request = max.min(opts.max_request_bytes) / bs * bs;
        if max_request == 0 {
            return Err(err(NbdErrorKind::InvalidOptions(format!(
                "the largest request ({}) is below the device block size {bs}",
                max.min(opts.max_request_bytes)
            ))));
        }
        let want = if flags & proto::FLAG_CAN_MULTI_CONN != 0 {
            opts.connections.clamp(1, 64)
        } else {
            1
        };
        let mut streams = vec![first];
        while streams.len() < want {
            let s = more().map_err(err)?;
            let n = negotiate(&s, export, opts).map_err(err)?;
            if n.size != neg.size || n.flags != neg.flags || n.structured != neg.structured {
                return Err(err(NbdErrorKind::Protocol(
                    "the connections disagree about the export".into(),
                )));
            }
            streams.push(s);
        }
        let params = ConnParams {
            structured: neg.structured,
            timeout: opts.request_timeout,
            max_requests: opts.max_in_flight.max(1),
            max_bytes: opts.max_in_flight_bytes.max(u64::from(max_request)),
        };
        let broken = Arc::new(AtomicBool::new(false));
        let last_message = Arc::new(Mutex::new(None));
        let mut conns = Vec::new();
        for (i, s) in streams.into_iter().enumerate() {
            let c = Conn::start(s, params, i, Arc::clone(&broken), Arc::clone(&last_message))
                .map_err(|e| {
                    err(NbdErrorKind::Io {
                        context: "starting the connection threads",
                        source: e,
                    })
                })?;
            conns.push(c);
        }
        let info = NbdInfo {
            export: export.to_string(),
            canonical_name: neg.name,
            description: neg.description,
            size: neg.size,
            flags,
            handshake: neg.handshake,
            structured_replies: neg.structured,
            block_sizes_advertised: advertised,
            min_block: min,
            preferred_block: pref,
            max_payload: max,
            max_request,
            connections: conns.len(),
        };
        Ok(NbdDevice {
            conns,
            next: AtomicUsize::new(0),
            read_only: opts.read_only || info.read_only(),
            geo: Geometry {
                block_size: bs,
                nr_blocks: neg.size / u64::from(bs),
            },
            info,
            broken,
            last_message,
            target: name.to_string(),
        })
    }

    /// What the server said about the export.
    pub fn info(&self) -> &NbdInfo {
        &self.info
    }

    /// The server, as a URI.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether writes are refused (the export is read-only, or the options asked for it).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a connection failed (every new bio then fails with EIO).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Why the connection failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.conns.iter().find_map(Conn::failure).or_else(|| {
            self.is_broken()
                .then(|| "the server is shutting down (ESHUTDOWN)".to_string())
        })
    }

    /// The last error the server reported, naming the request (and the server's message).
    pub fn last_error_message(&self) -> Option<String> {
        self.last_message.lock().clone()
    }

    /// Requests in flight (all connections).
    pub fn in_flight(&self) -> usize {
        self.conns.iter().map(Conn::in_flight).sum()
    }

    fn pick(&self) -> &Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }

    /// Submits a write that is durable when it completes (forced unit access): the write goes
    /// with `NBD_CMD_FLAG_FUA` if the server offers it, else it is followed by a FLUSH before
    /// it completes (or, with neither, as a plain write). Other bios are submitted as usual.
    pub fn submit_fua(&self, bio: Bio) {
        self.submit_bio(bio, true);
    }

    fn submit_bio(&self, bio: Bio, fua: bool) {
        let op = bio.op();
        let block = bio.start_block();
        if self.is_broken() {
            bio.complete(Err(IoError::Os {
                op,
                block,
                errno: libc::EIO,
            }));
            return;
        }
        if op == BioOp::Flush {
            if !self.info.can_flush() {
                bio.complete(Ok(()));
                return;
            }
            let ctx = Ctx::new(Target::Bio(bio), op, 0, false);
            let piece = Piece {
                cmd: proto::CMD_FLUSH,
                flags: 0,
                offset: 0,
                len: 0,
                rel: 0,
            };
            // Every connection flushes (CAN_MULTI_CONN makes one enough, but each is cheap).
            ctx.expect(self.conns.len());
            for c in &self.conns {
                c.submit(Arc::clone(&ctx), &[piece]);
            }
            return;
        }
        if let Err(e) = bio.check_bounds(self.geo) {
            bio.complete(Err(e));
            return;
        }
        if op == BioOp::Write && self.read_only {
            bio.complete(Err(IoError::ReadOnly));
            return;
        }
        let len = bio.len_bytes() as u64;
        if len == 0 {
            bio.complete(Ok(()));
            return;
        }
        let (cmd, mut flags, mut flush_after) = match op {
            BioOp::Read => (proto::CMD_READ, 0, false),
            _ => (proto::CMD_WRITE, 0, false),
        };
        if fua && op == BioOp::Write {
            if self.info.can_fua() {
                flags = proto::CMD_FLAG_FUA;
            } else {
                flush_after = self.info.can_flush();
            }
        }
        let pieces = self.split(cmd, flags, block, len);
        let ctx = Ctx::new(Target::Bio(bio), op, block, flush_after);
        ctx.expect(pieces.len());
        self.pick().submit(ctx, &pieces);
    }

    /// Requests for `len` bytes from device block `block`, each at most the largest request.
    fn split(&self, cmd: u16, flags: u16, block: u64, len: u64) -> Vec<Piece> {
        let base = block * u64::from(self.geo.block_size);
        let step = u64::from(self.info.max_request);
        let mut v = Vec::with_capacity(len.div_ceil(step) as usize);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(step);
            v.push(Piece {
                cmd,
                flags,
                offset: base + done,
                len: n as u32,
                rel: done as usize,
            });
            done += n;
        }
        v
    }

    /// Discards `nr_blocks` blocks from `start_block` (`NBD_CMD_TRIM`; the server may then
    /// read them back as anything). Completes through `done`, like a bio; EOPNOTSUPP if the
    /// server offers no TRIM, EROFS on a read-only export.
    pub fn submit_trim(
        &self,
        start_block: u64,
        nr_blocks: u64,
        done: impl FnOnce(Result<(), IoError>) + Send + 'static,
    ) {
        self.submit_no_payload(proto::CMD_TRIM, start_block, nr_blocks, Box::new(done));
    }

    /// Zeroes `nr_blocks` blocks from `start_block`: `NBD_CMD_WRITE_ZEROES` if the server offers
    /// it, else writes of zeroes. Completes through `done`, like a bio.
    pub fn submit_write_zeroes(
        &self,
        start_block: u64,
        nr_blocks: u64,
        done: impl FnOnce(Result<(), IoError>) + Send + 'static,
    ) {
        self.submit_no_payload(
            proto::CMD_WRITE_ZEROES,
            start_block,
            nr_blocks,
            Box::new(done),
        );
    }

    /// [`NbdDevice::submit_trim`], waiting.
    pub fn trim(&self, start_block: u64, nr_blocks: u64) -> Result<(), IoError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit_trim(start_block, nr_blocks, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(IoError::Shutdown))
    }

    /// [`NbdDevice::submit_write_zeroes`], waiting.
    pub fn write_zeroes(&self, start_block: u64, nr_blocks: u64) -> Result<(), IoError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit_write_zeroes(start_block, nr_blocks, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(IoError::Shutdown))
    }

    fn submit_no_payload(
        &self,
        cmd: u16,
        start_block: u64,
        nr_blocks: u64,
        done: Box<dyn FnOnce(Result<(), IoError>) + Send>,
    ) {
        let fail = |errno| {
            Err(IoError::Os {
                op: BioOp::Write,
                block: start_block,
                errno,
            })
        };
        if self.is_broken() {
            return done(fail(libc::EIO));
        }
        if self.read_only {
            return done(Err(IoError::ReadOnly));
        }
        if start_block
            .checked_add(nr_blocks)
            .is_none_or(|end| end > self.geo.nr_blocks)
        {
            return done(Err(IoError::OutOfRange {
                block: start_block,
                count: nr_blocks,
                nr_blocks: self.geo.nr_blocks,
            }));
        }
        if nr_blocks == 0 {
            return done(Ok(()));
        }
        let len = nr_blocks * u64::from(self.geo.block_size);
        match cmd {
            proto::CMD_TRIM if !self.info.can_trim() => return done(fail(libc::EOPNOTSUPP)),
            proto::CMD_WRITE_ZEROES if !self.info.can_write_zeroes() => {
                // Write zeroes instead, from one shared zero buffer.
                let zeros: Arc<dyn AsRef<[u8]> + Send + Sync> =
                    Arc::new(vec![0u8; ZERO_CHUNK.min(len as usize)]);
                let mut bio = Bio::new(BioOp::Write, start_block);
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZERO_CHUNK as u64) as usize;
                    bio.push(BioVec::new(BioBuf::Shared(Arc::clone(&zeros)), 0, n));
                    left -= n as u64;
                }
                let bio = bio.with_end_io(move |_, r| done(r));
                return self.submit_bio(bio, false);
            }
            _ => {}
        }
        let pieces = self.split(cmd, 0, start_block, len);
        let ctx = Ctx::new(Target::Call(done), BioOp::Write, start_block, false);
        ctx.expect(pieces.len());
        self.pick().submit(ctx, &pieces);
    }
}

impl BlockDevice for NbdDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn submit(&self, bio: Bio) {
        self.submit_bio(bio, false);
    }

    fn kind(&self) -> &'static str {
        "nbd"
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

/// Opens a socket to `addr` (not yet negotiated).
fn connect_stream(addr: &NbdAddress, timeout: Duration) -> Result<Stream, NbdErrorKind> {
    match addr {
        NbdAddress::Tcp { host, port } => {
            let addrs = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(NbdErrorKind::Connect)?;
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(NbdErrorKind::Connect(last))
        }
        #[cfg(unix)]
        NbdAddress::Unix(path) => {
            use std::os::unix::ffi::OsStrExt;
            let bytes = path.as_os_str().as_bytes();
            if let Some(name) = bytes.strip_prefix(b"\0") {
                #[cfg(any(target_os = "linux", target_os = "android"))]
                {
                    #[cfg(target_os = "android")]
                    use std::os::android::net::SocketAddrExt;
                    #[cfg(target_os = "linux")]
                    use std::os::linux::net::SocketAddrExt;
                    let a = std::os::unix::net::SocketAddr::from_abstract_name(name)
                        .map_err(NbdErrorKind::Connect)?;
                    return UnixStream::connect_addr(&a)
                        .map(Stream::Unix)
                        .map_err(NbdErrorKind::Connect);
                }
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                {
                    let _ = name;
                    return Err(NbdErrorKind::Unsupported(
                        "abstract Unix sockets exist only on Linux".into(),
                    ));
                }
            }
            UnixStream::connect(path)
                .map(Stream::Unix)
                .map_err(NbdErrorKind::Connect)
        }
    }
}

/// The handshake on one socket, under the connect timeout.
fn negotiate(
    s: &Stream,
    export: &str,
    opts: &NbdOptions,
) -> Result<proto::Negotiated, NbdErrorKind> {
    let io = |context| move |source| NbdErrorKind::Io { context, source };
    s.set_timeouts(Some(opts.connect_timeout.max(Duration::from_millis(1))))
        .map_err(io("setting the handshake timeout"))?;
    let mut h = s.try_clone().map_err(io("cloning the socket"))?;
    let n = proto::handshake(&mut h, export, opts.structured_replies)?;
    s.set_timeouts(None)
        .map_err(io("clearing the handshake timeout"))?;
    Ok(n)
}
