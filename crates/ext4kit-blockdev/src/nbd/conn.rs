//! One NBD connection in the transmission phase: the in-flight table, the writer, reader and
//! watchdog threads (see the module documentation of [`super`] for the design).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use parking_lot::{Condvar, Mutex};

use super::proto::{self, ReadBe, Stream};
use crate::{Bio, BioOp, IoError};

/// What a bio (or a trim / zeroing request) completes into.
pub(crate) enum Target {
    Bio(Bio),
    Call(Box<dyn FnOnce(Result<(), IoError>) + Send>),
}

impl Target {
    pub(crate) fn finish(self, status: Result<(), IoError>) {
        match self {
            Target::Bio(b) => b.complete(status),
            Target::Call(f) => f(status),
        }
    }
}

/// A bio split into one or more requests; the last reply completes it.
pub(crate) struct Ctx {
    /// The bio: its segments are written from here (writes) and filled here (reads).
    target: Mutex<Option<Target>>,
    status: Mutex<CtxStatus>,
    /// The operation and first device block, for the error the bio gets.
    op: BioOp,
    block: u64,
    /// After all pieces succeed, send a FLUSH before completing (FUA for a server without it).
    flush_after: bool,
}

struct CtxStatus {
    remaining: usize,
    error: Option<IoError>,
    flushing: bool,
}

impl Ctx {
    pub(crate) fn new(target: Target, op: BioOp, block: u64, flush_after: bool) -> Arc<Ctx> {
        Arc::new(Ctx {
            target: Mutex::new(Some(target)),
            status: Mutex::new(CtxStatus {
                remaining: 0,
                error: None,
                flushing: false,
            }),
            op,
            block,
            flush_after,
        })
    }

    /// Announces `n` more pieces; call before submitting any of them (a piece may complete
    /// before the next is submitted, and the bio must not complete early).
    pub(crate) fn expect(&self, n: usize) {
        self.status.lock().remaining += n;
    }

    fn errno(&self, errno: i32) -> IoError {
        IoError::Os {
            op: self.op,
            block: self.block,
            errno,
        }
    }

    /// Completes the bio with its collected status.
    fn complete(&self) {
        let status = match self.status.lock().error.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        if let Some(t) = self.target.lock().take() {
            t.finish(status);
        }
    }

    /// Finishes `n` pieces with `error` (first error wins); true if that was the last piece
    /// (the caller then completes the bio, or chains the flush).
    fn finish_pieces(&self, n: usize, error: Option<i32>) -> Finish {
        let mut st = self.status.lock();
        if let Some(errno) = error {
            if st.error.is_none() {
                st.error = Some(self.errno(errno));
            }
        }
        st.remaining = st.remaining.saturating_sub(n);
        if st.remaining > 0 {
            return Finish::More;
        }
        if self.flush_after && !st.flushing && st.error.is_none() {
            st.flushing = true;
            st.remaining = 1;
            return Finish::ThenFlush;
        }
        Finish::Done
    }
}

#[derive(PartialEq, Eq)]
enum Finish {
    More,
    ThenFlush,
    Done,
}

/// One request of a bio.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub cmd: u16,
    pub flags: u16,
    /// Absolute byte offset in the export.
    pub offset: u64,
    pub len: u32,
    /// Byte offset of this piece inside the bio's segments.
    pub rel: usize,
}

struct Pending {
    ctx: Arc<Ctx>,
    piece: Piece,
    started: Instant,
    /// Error reported by the server for this request.
    errno: Option<i32>,
    /// Bytes of a structured read reply received (data and holes).
    seen: u64,
}

/// Why the connection is gone.
#[derive(Debug, Clone)]
pub(crate) enum Dead {
    /// We sent NBD_CMD_DISC (the device was dropped).
    Closed,
    Failed(String),
}

struct State {
    next_cookie: u64,
    pending: BTreeMap<u64, Pending>,
    in_flight_bytes: u64,
    dead: Option<Dead>,
    /// The watchdog should exit.
    closing: bool,
}

/// Negotiated parameters the threads need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnParams {
    pub structured: bool,
    pub timeout: Duration,
    pub max_requests: usize,
    pub max_bytes: u64,
}

thread_local! {
    /// Set on reader threads (of any NBD connection): they free window slots, so a submit
    /// from an end function running there must never wait for one.
    static ON_READER: Cell<bool> = const { Cell::new(false) };
}

struct Shared {
    state: Mutex<State>,
    /// Window slot freed, table empty, connection dead.
    cond: Condvar,
    /// Wakes the watchdog early (connection dead or closing); replies do not.
    watchdog_cond: Condvar,
    /// A handle on the socket, to shut it down (wakes a blocked reader or writer).
    stream: Stream,
    params: ConnParams,
    /// Set when any connection of the device fails (later submits fail at once).
    device_broken: Arc<AtomicBool>,
    /// The last error message a server sent, with the request it was about.
    last_message: Arc<Mutex<Option<String>>>,
    index: usize,
}

impl Shared {
    /// Marks the connection dead and shuts the socket down; the reader then fails what is in
    /// flight.
    fn kill(&self, why: Dead) {
        {
            let mut st = self.state.lock();
            if st.dead.is_none() {
                st.dead = Some(why.clone());
            }
        }
        if let Dead::Failed(_) = why {
            self.device_broken.store(true, Ordering::SeqCst);
        }
        self.stream.shutdown(Shutdown::Both);
        self.cond.notify_all();
        self.watchdog_cond.notify_all();
    }
}

/// Messages to the writer thread.
enum Req {
    Cmd {
        cookie: u64,
        piece: Piece,
        ctx: Arc<Ctx>,
    },
    Disc,
}

/// A connection: submit pieces, drop to disconnect.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    tx: Sender<Req>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("Conn")
            .field("index", &self.shared.index)
            .field("in_flight", &st.pending.len())
            .field("dead", &st.dead)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Starts the threads on a connection in the transmission phase.
    pub(crate) fn start(
        stream: Stream,
        params: ConnParams,
        index: usize,
        device_broken: Arc<AtomicBool>,
        last_message: Arc<Mutex<Option<String>>>,
    ) -> io::Result<Conn> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_cookie: 1,
                pending: BTreeMap::new(),
                in_flight_bytes: 0,
                dead: None,
                closing: false,
            }),
            cond: Condvar::new(),
            watchdog_cond: Condvar::new(),
            stream: stream.try_clone()?,
            params,
            device_broken,
            last_message,
            index,
        });
        let (tx, rx) = unbounded::<Req>();
        let read_half = stream.try_clone()?;
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(
            thread::Builder::new()
                .name(format!("nbd-writer-{index}"))
                .spawn(move || writer_main(&s, stream, &rx))?,
        );
        let s = Arc::clone(&shared);
        let tx2 = tx.clone();
        let reader = thread::Builder::new()
            .name(format!("nbd-reader-{index}"))
            .spawn(move || reader_main(&s, read_half, &tx2));
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                shared.kill(Dead::Failed("cannot start the reader thread".into()));
                return Err(e);
            }
        };
        threads.push(reader);
        let s = Arc::clone(&shared);
        match thread::Builder::new()
            .name(format!("nbd-watchdog-{index}"))
            .spawn(move || watchdog_main(&s))
        {
            Ok(w) => threads.push(w),
            Err(e) => {
                shared.kill(Dead::Failed("cannot start the watchdog thread".into()));
                return Err(e);
            }
        }
        Ok(Conn {
            shared,
            tx,
            threads,
        })
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.state.lock().pending.len()
    }

    /// Why the connection failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        match &self.shared.state.lock().dead {
            Some(Dead::Failed(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// Sends `pieces` for `ctx` (announced with [`Ctx::expect`]), waiting (briefly) for room in the window before each. Pieces
    /// that cannot be sent (the connection is dead) fail with EIO; the bio completes once every
    /// piece is finished, on the reader thread or here.
    pub(crate) fn submit(&self, ctx: Arc<Ctx>, pieces: &[Piece]) {
        submit_on(&self.shared, &self.tx, ctx, pieces);
    }
}

fn submit_on(shared: &Shared, tx: &Sender<Req>, ctx: Arc<Ctx>, pieces: &[Piece]) {
    // A submit from an end function runs on a reader thread, the kind that frees window
    // slots: it must not wait for them (on this connection or another).
    let may_wait = !ON_READER.with(Cell::get);
    let p = shared.params;
    for (i, piece) in pieces.iter().enumerate() {
        let mut st = shared.state.lock();
        let bytes = payload_bytes(piece);
        loop {
            if st.dead.is_some() {
                break;
            }
            let fits =
                st.pending.len() < p.max_requests && st.in_flight_bytes + bytes <= p.max_bytes;
            if fits || st.pending.is_empty() || !may_wait {
                break;
            }
            shared.cond.wait(&mut st);
        }
        if st.dead.is_some() {
            drop(st);
            if ctx.finish_pieces(pieces.len() - i, Some(libc::EIO)) != Finish::More {
                ctx.complete();
            }
            return;
        }
        let cookie = st.next_cookie;
        st.next_cookie = st.next_cookie.wrapping_add(1);
        st.in_flight_bytes += bytes;
        st.pending.insert(
            cookie,
            Pending {
                ctx: Arc::clone(&ctx),
                piece: *piece,
                started: Instant::now(),
                errno: None,
                seen: 0,
            },
        );
        // Unbounded: never blocks. If the writer is gone the connection is dead and the
        // reader fails the piece from the table.
        let _ = tx.send(Req::Cmd {
            cookie,
            piece: *piece,
            ctx: Arc::clone(&ctx),
        });
    }
}

fn payload_bytes(p: &Piece) -> u64 {
    match p.cmd {
        proto::CMD_READ | proto::CMD_WRITE => u64::from(p.len),
        _ => 0,
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let on_own_thread = self
            .threads
            .iter()
            .any(|t| t.thread().id() == thread::current().id());
        let shared = Arc::clone(&self.shared);
        let tx = self.tx.clone();
        let threads = std::mem::take(&mut self.threads);
        let close = move || {
            // Let what is in flight finish (bounded: the watchdog fails a connection whose
            // oldest request is older than the timeout), then disconnect cleanly.
            {
                let mut st = shared.state.lock();
                while st.dead.is_none() && !st.pending.is_empty() {
                    shared.cond.wait(&mut st);
                }
                st.closing = true;
            }
            shared.watchdog_cond.notify_all();
            let _ = tx.send(Req::Disc);
            drop(tx);
            for t in threads {
                let _ = t.join();
            }
        };
        if on_own_thread {
            // Dropped from an end function on the reader thread: it cannot wait for itself.
            let _ = thread::Builder::new().name("nbd-close".into()).spawn(close);
        } else {
            close();
        }
    }
}

fn writer_main(shared: &Shared, stream: Stream, rx: &Receiver<Req>) {
    let mut w = BufWriter::with_capacity(256 << 10, stream);
    loop {
        let req = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                if let Err(e) = w.flush() {
                    shared.kill(Dead::Failed(format!("sending to the server failed: {e}")));
                    return;
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        let res = match req {
            Req::Cmd { cookie, piece, ctx } => write_request(&mut w, cookie, &piece, &ctx),
            Req::Disc => {
                let h = proto::request_header(0, proto::CMD_DISC, 0, 0, 0);
                let _ = w.write_all(&h).and_then(|()| w.flush());
                // The server closes the connection on NBD_CMD_DISC; nothing more is expected.
                shared.kill(Dead::Closed);
                return;
            }
        };
        if let Err(e) = res {
            shared.kill(Dead::Failed(format!("sending to the server failed: {e}")));
            return;
        }
    }
}

fn write_request(
    w: &mut BufWriter<Stream>,
    cookie: u64,
    piece: &Piece,
    ctx: &Ctx,
) -> io::Result<()> {
    w.write_all(&proto::request_header(
        piece.flags,
        piece.cmd,
        cookie,
        piece.offset,
        piece.len,
    ))?;
    if piece.cmd != proto::CMD_WRITE {
        return Ok(());
    }
    // The reader never locks a write bio's target before all its pieces are replied to, so
    // holding it while the socket takes the payload cannot stall the reader.
    let target = ctx.target.lock();
    let Some(Target::Bio(bio)) = &*target else {
        return Err(io::Error::other("write payload gone"));
    };
    let mut skip = piece.rel;
    let mut left = piece.len as usize;
    for v in bio.vecs() {
        if left == 0 {
            break;
        }
        let b = v.bytes();
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let n = (b.len() - skip).min(left);
        w.write_all(&b[skip..skip + n])?;
        skip = 0;
        left -= n;
    }
    if left != 0 {
        return Err(io::Error::other("write payload shorter than the request"));
    }
    Ok(())
}

/// Why the reader stopped.
enum Stop {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

fn reader_main(shared: &Shared, stream: Stream, tx: &Sender<Req>) {
    ON_READER.with(|r| r.set(true));
    let mut r = BufReader::with_capacity(256 << 10, stream);
    let stop = loop {
        if let Err(stop) = read_reply(shared, &mut r, tx) {
            break stop;
        }
    };
    let why = match stop {
        Stop::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection".to_string()
        }
        Stop::Io(e) => format!("receiving from the server failed: {e}"),
        Stop::Protocol(m) => format!("the server broke the NBD protocol: {m}"),
    };
    let dead = shared.state.lock().dead.clone();
    match dead {
        // A clean close with nothing in flight: nothing to report.
        Some(Dead::Closed) => shared.kill(Dead::Closed),
        _ => shared.kill(Dead::Failed(why)),
    }
    // Nothing is registered once the connection is dead: fail what is in the table.
    let drained: Vec<Pending> = {
        let mut st = shared.state.lock();
        st.in_flight_bytes = 0;
        std::mem::take(&mut st.pending).into_values().collect()
    };
    shared.cond.notify_all();
    for p in drained {
        if p.ctx.finish_pieces(1, Some(libc::EIO)) != Finish::More {
            p.ctx.complete();
        }
    }
}

/// Looks up an in-flight request.
fn lookup(shared: &Shared, cookie: u64) -> Result<(Arc<Ctx>, Piece), Stop> {
    let st = shared.state.lock();
    match st.pending.get(&cookie) {
        Some(p) => Ok((Arc::clone(&p.ctx), p.piece)),
        None => Err(Stop::Protocol(format!(
            "reply for cookie {cookie}, which is not in flight"
        ))),
    }
}

fn read_reply(shared: &Shared, r: &mut BufReader<Stream>, tx: &Sender<Req>) -> Result<(), Stop> {
    let magic = r.be_u32()?;
    match magic {
        proto::SIMPLE_REPLY_MAGIC => {
            let error = r.be_u32()?;
            let cookie = r.be_u64()?;
            let (ctx, piece) = lookup(shared, cookie)?;
            let errno = (error != 0).then(|| proto::errno_of(error));
            if piece.cmd == proto::CMD_READ {
                if shared.params.structured {
                    return Err(Stop::Protocol("simple reply to a read".into()));
                }
                if error == 0 {
                    fill(r, &ctx, piece.rel, u64::from(piece.len), Fill::Read)?;
                }
            }
            if let Some(e) = errno {
                note_error(shared, &piece, e, "");
            }
            finish(shared, tx, cookie, errno, None);
            Ok(())
        }
        proto::STRUCTURED_REPLY_MAGIC => {
            let flags = r.be_u16()?;
            let ty = r.be_u16()?;
            let cookie = r.be_u64()?;
            let len = r.be_u32()?;
            if !shared.params.structured {
                return Err(Stop::Protocol(
                    "structured reply without NBD_OPT_STRUCTURED_REPLY".into(),
                ));
            }
            let (ctx, piece) = lookup(shared, cookie)?;
            let mut seen = 0u64;
            let mut errno = None;
            match ty {
                proto::REPLY_TYPE_NONE => {
                    if len != 0 {
                        return Err(Stop::Protocol("NBD_REPLY_TYPE_NONE with a payload".into()));
                    }
                    if flags & proto::REPLY_FLAG_DONE == 0 {
                        return Err(Stop::Protocol("NBD_REPLY_TYPE_NONE without DONE".into()));
                    }
                }
                proto::REPLY_TYPE_OFFSET_DATA | proto::REPLY_TYPE_OFFSET_HOLE => {
                    if piece.cmd != proto::CMD_READ {
                        return Err(Stop::Protocol(format!(
                            "read data in the reply to a {}",
                            proto::cmd_name(piece.cmd)
                        )));
                    }
                    let hole = ty == proto::REPLY_TYPE_OFFSET_HOLE;
                    if (hole && len != 12) || (!hole && len < 9) {
                        return Err(Stop::Protocol(format!("read chunk of length {len}")));
                    }
                    let off = r.be_u64()?;
                    let n = if hole {
                        u64::from(r.be_u32()?)
                    } else {
                        u64::from(len - 8)
                    };
                    let end = off.checked_add(n);
                    let req_end = piece.offset + u64::from(piece.len);
                    if off < piece.offset || end.is_none_or(|e| e > req_end) || n == 0 {
                        return Err(Stop::Protocol(format!(
                            "read chunk of {n} bytes at {off} outside the request ({} bytes at {})",
                            piece.len, piece.offset
                        )));
                    }
                    let rel = piece.rel + (off - piece.offset) as usize;
                    fill(r, &ctx, rel, n, if hole { Fill::Zero } else { Fill::Read })?;
                    seen = n;
                }
                t if t & proto::REPLY_TYPE_ERROR_BIT != 0 => {
                    if len < 6 {
                        return Err(Stop::Protocol(format!("error chunk of length {len}")));
                    }
                    let error = r.be_u32()?;
                    let mlen = r.be_u16()?;
                    if u32::from(mlen) > len - 6 {
                        return Err(Stop::Protocol("error message longer than its chunk".into()));
                    }
                    if len > (1 << 20) {
                        return Err(Stop::Protocol(format!("error chunk of {len} bytes")));
                    }
                    let mut msg = vec![0u8; usize::from(mlen)];
                    r.read_exact(&mut msg)?;
                    r.skip(u64::from(len - 6 - u32::from(mlen)))?;
                    let e = proto::errno_of(error);
                    errno = Some(e);
                    note_error(shared, &piece, e, &String::from_utf8_lossy(&msg));
                }
                t => return Err(Stop::Protocol(format!("unknown reply chunk type {t}"))),
            }
            let done = flags & proto::REPLY_FLAG_DONE != 0;
            {
                let mut st = shared.state.lock();
                if let Some(p) = st.pending.get_mut(&cookie) {
                    p.seen += seen;
                    if p.errno.is_none() {
                        p.errno = errno;
                    }
                }
            }
            if done {
                finish(shared, tx, cookie, None, Some(()));
            }
            Ok(())
        }
        m => Err(Stop::Protocol(format!("bad reply magic {m:#010x}"))),
    }
}

/// Records the server's message for the error of `piece`.
fn note_error(shared: &Shared, piece: &Piece, errno: i32, msg: &str) {
    let mut m = format!(
        "NBD {} of {} bytes at offset {} failed: {}",
        proto::cmd_name(piece.cmd),
        piece.len,
        piece.offset,
        io::Error::from_raw_os_error(errno)
    );
    if !msg.is_empty() {
        m.push_str(": ");
        m.push_str(msg);
    }
    *shared.last_message.lock() = Some(m);
}

enum Fill {
    Read,
    Zero,
}

/// Reads `n` bytes of reply data (or zeroes them, for a hole) into the bio at byte `rel`.
/// Shared (read-only) segments and a bio that is gone take the bytes into the void.
fn fill(r: &mut BufReader<Stream>, ctx: &Ctx, rel: usize, n: u64, how: Fill) -> Result<(), Stop> {
    let mut target = ctx.target.lock();
    let mut skip = rel;
    let mut left = n as usize;
    if let Some(Target::Bio(bio)) = &mut *target {
        for v in bio.vecs_mut() {
            if left == 0 {
                break;
            }
            let len = v.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let k = (len - skip).min(left);
            match (v.bytes_mut(), &how) {
                (Some(dst), Fill::Read) => r.read_exact(&mut dst[skip..skip + k])?,
                (Some(dst), Fill::Zero) => dst[skip..skip + k].fill(0),
                (None, Fill::Read) => r.skip(k as u64)?,
                (None, Fill::Zero) => {}
            }
            skip = 0;
            left -= k;
        }
    }
    if let Fill::Read = how {
        r.skip(left as u64)?;
    }
    Ok(())
}

/// A request's reply is complete: take it out of the table, account the bio, chain the flush
/// of an emulated FUA write, complete the bio when it was the last piece. `structured` marks a
/// structured reply, whose read data must have covered the request.
fn finish(
    shared: &Shared,
    tx: &Sender<Req>,
    cookie: u64,
    errno: Option<i32>,
    structured: Option<()>,
) {
    let p = {
        let mut st = shared.state.lock();
        let Some(p) = st.pending.remove(&cookie) else {
            return;
        };
        st.in_flight_bytes -= payload_bytes(&p.piece);
        p
    };
    shared.cond.notify_all();
    let mut err = errno.or(p.errno);
    if err.is_none()
        && structured.is_some()
        && p.piece.cmd == proto::CMD_READ
        && p.seen != u64::from(p.piece.len)
    {
        // A successful structured read must cover the request; the rest would be garbage.
        err = Some(libc::EIO);
        note_error(
            shared,
            &p.piece,
            libc::EIO,
            "the server's reply did not cover the request",
        );
    }
    if err == Some(libc::ESHUTDOWN) {
        // The server is going away: no new requests (the device disconnects when dropped).
        shared.device_broken.store(true, Ordering::SeqCst);
    }
    match p.ctx.finish_pieces(1, err) {
        Finish::More => {}
        Finish::Done => p.ctx.complete(),
        Finish::ThenFlush => {
            let flush = Piece {
                cmd: proto::CMD_FLUSH,
                flags: 0,
                offset: 0,
                len: 0,
                rel: 0,
            };
            // finish_pieces counted the flush as the one remaining piece.
            submit_on(shared, tx, p.ctx, &[flush]);
        }
    }
}

fn watchdog_main(shared: &Shared) {
    let timeout = shared.params.timeout;
    let mut st = shared.state.lock();
    loop {
        if st.dead.is_some() || st.closing {
            return;
        }
        let oldest = st.pending.iter().next().map(|(_, p)| (p.started, p.piece));
        match oldest {
            Some((started, piece)) => {
                let deadline = started + timeout;
                if Instant::now() >= deadline {
                    drop(st);
                    shared.kill(Dead::Failed(format!(
                        "no reply within {timeout:?} to the NBD {} of {} bytes at offset {}",
                        proto::cmd_name(piece.cmd),
                        piece.len,
                        piece.offset
                    )));
                    return;
                }
                shared.watchdog_cond.wait_until(&mut st, deadline);
            }
            None => {
                shared.watchdog_cond.wait_for(&mut st, timeout);
            }
        }
    }
}
