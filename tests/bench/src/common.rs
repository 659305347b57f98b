//! Pieces shared by the anygrpc and tonic bench programs (tonic's crate includes this file by
//! path, so both are measured by the same code): the counting allocator, flags, the closed-loop
//! worker over [`BenchCalls`], latency stats and the JSON line.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The system allocator, counting allocations.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations so far (reallocations count as one).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Calls the server has handled, for allocations-per-call reports.
pub static CALLS: AtomicU64 = AtomicU64::new(0);

/// Prints `stats calls=N allocs=M` to stderr once a second, so a driver can diff two readings.
pub fn report_server_stats() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(1));
        eprintln!(
            "stats calls={} allocs={}",
            CALLS.load(Ordering::Relaxed),
            allocations()
        );
    });
}

/// Microseconds of CPU work the server's handlers do per call (`--work-us`, default 0: echo).
static HANDLER_WORK_US: AtomicU64 = AtomicU64::new(0);

/// Reads the server's `--work-us` flag: the CPU work each handler does before it answers.
pub fn read_server_work(args: &[String]) {
    HANDLER_WORK_US.store(number(args, "work-us", 0), Ordering::Relaxed);
}

/// The handler's work: busy-spins for `--work-us`, as a handler that parses, queries and
/// computes uses its thread. Both servers' handlers call this first.
pub fn handler_work() {
    spin(HANDLER_WORK_US.load(Ordering::Relaxed));
}

/// Busy-spins this thread for `us` microseconds (nothing when 0).
pub fn spin(us: u64) {
    if us == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// `--name value` / `--name=value` flags.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == &long {
            return iter.next().cloned();
        }
        if let Some(v) = arg.strip_prefix(&format!("{long}=")) {
            return Some(v.to_owned());
        }
    }
    None
}

/// A numeric flag with a default.
pub fn number(args: &[String], name: &str, default: u64) -> u64 {
    flag(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("--{name}: not a number: {v}"))
    })
}

/// A load generator's flags, read the same way by both implementations:
/// `--addr HOST:PORT --mode M --concurrency C --connections N --size S --duration-secs D
/// [--reply-work-us W]`.
#[derive(Debug, Clone)]
pub struct Load {
    /// The server's address.
    pub addr: String,
    /// One of [`MODES`].
    pub mode: String,
    /// Calls in flight (one worker each).
    pub concurrency: usize,
    /// Channels (connections) the workers share in turn.
    pub connections: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// How long the closed loop runs.
    pub duration: Duration,
    /// Microseconds of CPU work a worker does after each reply, as a caller that uses what it
    /// got back.
    pub reply_work_us: u64,
}

impl Load {
    /// Reads the flags from `args`; `default_addr` when `--addr` is missing.
    pub fn from_args(args: &[String], default_addr: &str) -> Load {
        Load {
            addr: flag(args, "addr").unwrap_or_else(|| default_addr.into()),
            mode: flag(args, "mode").unwrap_or_else(|| "unary".into()),
            concurrency: number(args, "concurrency", 1).max(1) as usize,
            connections: number(args, "connections", 1).max(1) as usize,
            size: number(args, "size", 16) as usize,
            duration: Duration::from_secs(number(args, "duration-secs", 5)),
            reply_work_us: number(args, "reply-work-us", 0),
        }
    }
}

/// The measurement modes.
pub const MODES: &[&str] = &["unary", "server-stream", "client-stream", "bidi"];

/// The largest message both load generators take (the libraries' default is 4 MiB, less than
/// a 4 MiB body and its framing).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Messages per server-stream and client-stream call.
pub const STREAM_MESSAGES: u32 = 100;

/// The calls of `bench.v1.Bench`, as one library's generated client makes them; the worker
/// below is the same for both libraries.
pub trait BenchCalls {
    /// A bidi call in progress.
    type Bidi: BidiRoundTrip;

    /// Unary: sends `body`; the reply's size.
    fn unary(&mut self, body: Vec<u8>) -> impl Future<Output = Result<usize, String>> + Send;

    /// Server streaming: asks for `count` messages of `size` bytes; (messages, bytes) received.
    fn server_stream(
        &mut self,
        count: u32,
        size: u32,
    ) -> impl Future<Output = Result<(u64, usize), String>> + Send;

    /// Client streaming: sends `count` copies of `body`; the reply's size.
    fn client_stream(
        &mut self,
        body: Vec<u8>,
        count: u32,
    ) -> impl Future<Output = Result<usize, String>> + Send;

    /// Opens a bidi call.
    fn bidi(&mut self) -> impl Future<Output = Result<Self::Bidi, String>> + Send;
}

/// A bidi call used as ping-pong: one message in flight, so its send queue never grows.
pub trait BidiRoundTrip {
    /// Sends `body` and waits for its echo; the echo's size, or `None` if the call failed.
    fn round_trip(&mut self, body: Vec<u8>) -> impl Future<Output = Option<usize>> + Send;
}

/// One worker's closed loop: calls of `load.mode` back to back until `until`, each reply
/// followed by `load.reply_work_us` of CPU work.
pub async fn worker<C: BenchCalls>(mut client: C, load: &Load, until: Instant) -> Report {
    let (mode, size) = (load.mode.as_str(), load.size);
    let mut report = Report::default();
    let body = vec![0u8; size];
    if mode == "bidi" {
        let Ok(mut call) = client.bidi().await else {
            report.errors += 1;
            return report;
        };
        while Instant::now() < until {
            let start = Instant::now();
            match call.round_trip(body.clone()).await {
                Some(bytes) => {
                    report.record(start, 1, bytes);
                    spin(load.reply_work_us);
                }
                None => {
                    report.errors += 1;
                    break;
                }
            }
        }
        return report;
    }
    while Instant::now() < until {
        let start = Instant::now();
        let outcome = match mode {
            "unary" => client.unary(body.clone()).await.map(|bytes| (1, bytes)),
            "server-stream" => client.server_stream(STREAM_MESSAGES, size as u32).await,
            "client-stream" => client
                .client_stream(body.clone(), STREAM_MESSAGES)
                .await
                .map(|bytes| (1, bytes)),
            other => panic!("unknown mode {other}; modes: {MODES:?}"),
        };
        match outcome {
            Ok((messages, bytes)) => {
                report.record(start, messages, bytes);
                spin(load.reply_work_us);
            }
            Err(error) => {
                if report.errors == 0 && std::env::var_os("BENCH_VERBOSE").is_some() {
                    eprintln!("first error: {error}");
                }
                report.errors += 1
            }
        }
    }
    report
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Completed calls (bidi: completed round trips).
    pub calls: u64,
    /// Messages received by the client.
    pub messages: u64,
    /// Payload bytes received by the client.
    pub bytes: u64,
    /// Per-call latencies, microseconds.
    pub latencies_us: Vec<u32>,
    /// Failed calls.
    pub errors: u64,
}

impl Report {
    /// Records a completed call that started at `start`.
    pub fn record(&mut self, start: std::time::Instant, messages: u64, bytes: usize) {
        self.calls += 1;
        self.messages += messages;
        self.bytes += bytes as u64;
        self.latencies_us.push(start.elapsed().as_micros() as u32);
    }

    /// Merges another worker's report.
    pub fn merge(&mut self, other: Report) {
        self.calls += other.calls;
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    /// The JSON line the bench scripts read.
    pub fn json(
        mut self,
        implementation: &str,
        args: &[String],
        elapsed: Duration,
        allocations: u64,
    ) -> String {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| {
            if self.latencies_us.is_empty() {
                return 0;
            }
            let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies_us.len())
                - 1;
            self.latencies_us[i]
        };
        let secs = elapsed.as_secs_f64();
        format!(
            concat!(
                "{{\"impl\":\"{}\",\"mode\":\"{}\",\"concurrency\":{},\"connections\":{},\"size\":{},",
                "\"seconds\":{:.2},\"calls\":{},\"errors\":{},\"rps\":{:.0},\"msgs_per_sec\":{:.0},",
                "\"mb_per_sec\":{:.2},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"allocs_per_call\":{:.1}}}"
            ),
            implementation,
            flag(args, "mode").unwrap_or_default(),
            number(args, "concurrency", 1),
            number(args, "connections", 1),
            number(args, "size", 16),
            secs,
            self.calls,
            self.errors,
            self.calls as f64 / secs,
            self.messages as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            pct(0.5),
            pct(0.99),
            pct(0.999),
            allocations as f64 / self.calls.max(1) as f64,
        )
    }
}
