//! What to run and how much of it: the `BENCH_*` environment variables (table in `main.rs`).

use std::time::{Duration, Instant};

/// What to run and how much of it, from `BENCH_*` environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed turns per path in part 1 (`BENCH_TURNS`).
    pub turns: usize,
    /// Untimed turns per path before part 1 (`BENCH_WARMUP`).
    pub warmup: usize,
    /// Slow turns in part 2 (`BENCH_DELIVERY_TURNS`).
    pub delivery_turns: usize,
    /// The model's pause before each delta in part 2, ms (`BENCH_DELAY_MS`).
    pub delay_ms: u64,
    /// Idle sessions in part 3 (`BENCH_SESSIONS`).
    pub sessions: usize,
    /// New sessions timed in part 4 (`BENCH_NEW`).
    pub new_sessions: usize,
    /// Cold resumes per path in part 5 (`BENCH_COLD`).
    pub cold_turns: usize,
    /// Sessions created in part 6 (`BENCH_SCALE_SESSIONS`).
    pub scale_sessions: usize,
    /// Sessions sending at once in part 6 (`BENCH_SCALE_CONCURRENT`).
    pub scale_concurrent: usize,
    /// The parts asked for, in order (`BENCH_ONLY`).
    pub parts: Vec<Part>,
    /// When every part stops and reports what it has (`BENCH_MAX_SECS` from the start).
    pub deadline: Instant,
    /// `BENCH_MAX_SECS`.
    pub max_secs: u64,
}

/// One of the measurements, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Latency,
    Delivery,
    Memory,
    New,
    Cold,
    Scale,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::Latency,
        Part::Delivery,
        Part::Memory,
        Part::New,
        Part::Cold,
        Part::Scale,
    ];

    /// The part's name in `BENCH_ONLY`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Latency => "latency",
            Part::Delivery => "delivery",
            Part::Memory => "memory",
            Part::New => "new",
            Part::Cold => "cold",
            Part::Scale => "scale",
        }
    }
}

/// A non-negative integer from the environment; `default` when unset, a warning and `default`
/// when it does not parse.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("warning: {name}={v:?} is not a non-negative integer; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// [`env_u64`] as a count of at least 1.
fn env_count(name: &str, default: usize) -> usize {
    usize::try_from(env_u64(name, default as u64))
        .unwrap_or(default)
        .max(1)
}

/// Parses `BENCH_ONLY` (comma-separated part names, or `all`): the parts asked for, in order,
/// and the words that name no part.
pub fn parse_parts(spec: Option<&str>) -> (Vec<Part>, Vec<String>) {
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty() && *s != "all") else {
        return (Part::ALL.to_vec(), Vec::new());
    };
    let (mut parts, mut unknown) = (Vec::new(), Vec::new());
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match Part::ALL.iter().find(|p| p.name() == word) {
            Some(p) if !parts.contains(p) => parts.push(*p),
            Some(_) => {}
            None => unknown.push(word.to_owned()),
        }
    }
    (parts, unknown)
}

impl Settings {
    /// Reads every `BENCH_*` variable; warns about what does not parse.
    pub fn from_env() -> Settings {
        let max_secs = env_u64("BENCH_MAX_SECS", 1800).max(1);
        let (parts, unknown) = parse_parts(std::env::var("BENCH_ONLY").ok().as_deref());
        for word in unknown {
            let known: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
            eprintln!(
                "warning: BENCH_ONLY: unknown part {word:?} (known: {})",
                known.join(", ")
            );
        }
        Settings {
            turns: env_count("BENCH_TURNS", 200),
            warmup: usize::try_from(env_u64("BENCH_WARMUP", 2)).unwrap_or(2),
            delivery_turns: env_count("BENCH_DELIVERY_TURNS", 30),
            delay_ms: env_u64("BENCH_DELAY_MS", 50).clamp(1, 10_000),
            sessions: env_count("BENCH_SESSIONS", 100),
            new_sessions: env_count("BENCH_NEW", 20),
            cold_turns: env_count("BENCH_COLD", 15),
            scale_sessions: env_count("BENCH_SCALE_SESSIONS", 1000),
            scale_concurrent: env_count("BENCH_SCALE_CONCURRENT", 50),
            parts,
            deadline: Instant::now() + Duration::from_secs(max_secs),
            max_secs,
        }
    }

    /// Whether the overall deadline is still ahead.
    pub fn time_left(&self) -> bool {
        Instant::now() < self.deadline
    }
}
