//! The fd limit and per-process CPU / memory from /proc.

use serde::Serialize;

/// Outcome of raising RLIMIT_NOFILE.
#[derive(Debug, Clone, Serialize)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    pub wanted: u64,
    /// Set when the limit is below what the run needs.
    pub warning: Option<String>,
}

/// Raises the soft fd limit to the hard limit, and (with CAP_SYS_RESOURCE,
/// e.g. as root) the hard limit too when `wanted` is above it.
pub fn raise_nofile(wanted: u64) -> FdLimit {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        if r.rlim_max < wanted {
            let want = libc::rlimit {
                rlim_cur: wanted as libc::rlim_t,
                rlim_max: wanted as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
        if r.rlim_cur < r.rlim_max {
            let up = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                r = up;
            }
        }
        let (soft, hard) = (r.rlim_cur, r.rlim_max);
        let warning = (soft < wanted).then(|| {
            format!(
                "RLIMIT_NOFILE is {soft} (hard {hard}) but this run needs about {wanted} \
                 descriptors: connections beyond the limit will fail with EMFILE. \
                 Raise it (`ulimit -n {wanted}` as root, or /etc/security/limits.conf)."
            )
        });
        FdLimit {
            soft,
            hard,
            wanted,
            warning,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// user + system CPU seconds so far.
    pub cpu_s: f64,
    pub rss_kib: u64,
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU and RSS of `pid` ("self" for this process), None if it is gone.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_s: (utime + stime) / clk_tck(),
        rss_kib,
    })
}

/// The processes `pids` together: CPU seconds and RSS summed (None if any
/// cannot be read, or none is given).
pub fn sample_all(pids: &[String]) -> Option<ProcSample> {
    let mut total: Option<ProcSample> = None;
    for pid in pids {
        let s = sample(pid)?;
        total = Some(match total {
            None => s,
            Some(t) => ProcSample {
                cpu_s: t.cpu_s + s.cpu_s,
                rss_kib: t.rss_kib + s.rss_kib,
            },
        });
    }
    total
}

/// The machine, for the report.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_self() {
        let s = super::sample("self").unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_s >= 0.0);
    }
}
