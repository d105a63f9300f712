//! What the benches that run the real binary share: sizes from the environment, the open-file
//! limit, a server child process with its CPU time and memory read from /proc (Linux), and
//! WebSocket clients that join and count what they receive.

pub mod clients;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A size from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A list of sizes from the environment (`1000,5000`), or `default`.
pub fn env_sizes(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

/// The sizes of `LOREWIRE_BENCH_SESSIONS` (default 1,000 / 5,000 / 15,000) that fit under the
/// open-file limit once raised to its hard limit; says so of each that does not.
pub fn session_sizes(label: &str) -> Vec<usize> {
    let fds = raise_fd_limit() as usize;
    println!("{label}: open-file limit raised to {fds} (the hard limit)");
    let mut sizes = env_sizes("LOREWIRE_BENCH_SESSIONS", &[1000, 5000, 15000]);
    sizes.retain(|&size| {
        let fits = size + 200 <= fds;
        if !fits {
            println!("{label}: {size:>6} sessions do not fit under the open-file limit of {fds}; skipped");
        }
        fits
    });
    sizes
}

/// Raises this process's open-file limit to its hard limit (the server children inherit it).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// User + system CPU time of process `pid` so far.
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// A numeric field of /proc/PID/status (`VmRSS` in KiB, `Threads`).
pub fn status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
}

/// Context switches (voluntary + involuntary) of every live thread of process `pid` so far:
/// each hand-off between threads costs one at least.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:").or(l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The `p` quantile of sorted durations, in milliseconds.
pub fn ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// A command running `binary`, under `LOREWIRE_BENCH_WRAPPER` when it is set (e.g.
/// `heaptrack -o /tmp/lw`: a profiler; the memory and CPU figures are then the wrapper's).
pub fn command(binary: impl AsRef<std::ffi::OsStr>) -> Command {
    match std::env::var("LOREWIRE_BENCH_WRAPPER") {
        Ok(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut cmd = Command::new(words.next().expect("a wrapper command"));
            cmd.args(words).arg(binary);
            cmd
        }
        Err(_) => Command::new(binary),
    }
}

/// A server child process listening on `addr`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the lorewire release binary on a free port with a SQLite file of its own (unless
    /// `env` names another `DATABASE_URL`), no LLM key, no chat rate, connection or subscription
    /// limit to speak of, and waits until `/ready` answers. `LOREWIRE_BENCH_BINARY` names another build of lorewire to
    /// measure (an earlier commit's, for a before/after).
    pub async fn lorewire(env: &[(&str, String)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = free_addr();
        let binary = std::env::var("LOREWIRE_BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lorewire").into());
        let mut cmd = command(binary);
        cmd.current_dir(dir.path())
            .env("DATABASE_URL", dir.path().join("bench.db"))
            .env("LOREWIRE_BIND", &addr)
            .env("LOREWIRE_ADMIN_TOKEN", "bench-admin")
            .env("LOREWIRE_CHAT_RATE", "1000000/1s")
            // Every bench client connects from 127.0.0.1, and one may hold thousands of items.
            .env("LOREWIRE_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
            .env("LOREWIRE_MAX_SUBSCRIPTIONS", "1000000")
            .env("LOREWIRE_NEW_PLAYERS_RATE", "1000000/1s")
            // One bench client is one player who starts thousands of items and runs.
            .env("LOREWIRE_PLAYER_DAILY_TOKENS", "none")
            .env("LOREWIRE_PLAYER_LLM_RATE", "1000000/1s")
            .env("LOREWIRE_PLAYER_UNWATCHED_RUNS", "1000000")
            .env("RUST_LOG", "warn")
            .env_remove("LOREWIRE_REDIS_URL")
            .env_remove("LOREWIRE_LLM_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY");
        for (name, value) in env {
            cmd.env(name, value);
        }
        Server::spawn(cmd, addr, dir, "/ready").await
    }

    /// Starts `cmd` (told its address already) and waits until `ready_path` answers 2xx.
    pub async fn spawn(mut cmd: Command, addr: String, dir: tempfile::TempDir, ready_path: &str) -> Server {
        // A group of its own: a wrapper's own child (the server under heaptrack) is stopped too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the server starts");
        let server = Server { child, addr, _dir: dir };
        let client = awc::Client::default();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = client.get(format!("http://{}{ready_path}", server.addr)).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < until, "the server did not become ready");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn status(&self, field: &str) -> u64 {
        status(self.child.id(), field)
    }

    pub fn rss_kib(&self) -> u64 {
        self.status("VmRSS")
    }

    pub fn cpu(&self) -> Duration {
        cpu(self.child.id())
    }

    pub fn context_switches(&self) -> u64 {
        context_switches(self.child.id())
    }
}

impl Drop for Server {
    /// Kills the child; a server under a wrapper gets SIGTERM (its wrapper then writes its
    /// profile as the server exits).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SAFETY: signals the process group this bench started (its id is the child's).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
    }
}
