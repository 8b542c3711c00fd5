//! How much host memory this process may use: the smaller of what the machine reports
//! (`/proc/meminfo`) and the memory limit of the control group it runs in (cgroup v2
//! `memory.max` / `memory.current`, or v1 `memory.limit_in_bytes` / `memory.usage_in_bytes`).
//!
//! Inside a container `/proc/meminfo` describes the host, not the container: a size decision made
//! from it alone gets the process OOM-killed instead of refused or streamed. Every memory-sized
//! decision of the crate (automatic memory-mapped output, compressed member limits, the CUDA pin
//! budget) reads this module. The parsers are pure functions over the files' text, so they are
//! tested without a container.

use std::path::Path;

/// A snapshot of the memory this process may use, in bytes. `None` fields are unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `MemTotal` of `/proc/meminfo`.
    pub host_total: Option<u64>,
    /// `MemAvailable` of `/proc/meminfo`.
    pub host_available: Option<u64>,
    /// The control group's limit (`None` when there is none, or it is `max`).
    pub cgroup_limit: Option<u64>,
    /// The control group's current usage, when it has a limit.
    pub cgroup_usage: Option<u64>,
}

impl MemoryLimits {
    /// Reads `/proc/meminfo` and this process's control group.
    pub fn read() -> MemoryLimits {
        Self::read_from(Path::new("/proc"), Path::new("/sys/fs/cgroup"))
    }

    /// Reads from other roots (`proc` is `/proc`, `cgroup` is `/sys/fs/cgroup`); for tests.
    pub fn read_from(proc: &Path, cgroup: &Path) -> MemoryLimits {
        let meminfo = std::fs::read_to_string(proc.join("meminfo")).unwrap_or_default();
        let (host_total, host_available) = parse_meminfo(&meminfo);
        let (cgroup_limit, cgroup_usage) = read_cgroup(proc, cgroup);
        MemoryLimits {
            host_total,
            host_available,
            cgroup_limit,
            cgroup_usage,
        }
    }

    /// Total memory this process may use: the smaller of `MemTotal` and the cgroup limit.
    pub fn total(&self) -> Option<u64> {
        min_known(self.host_total, self.cgroup_limit)
    }

    /// Memory available now: the smaller of `MemAvailable` and the cgroup's limit less its usage.
    pub fn available(&self) -> Option<u64> {
        let cgroup_free = self
            .cgroup_limit
            .map(|limit| limit.saturating_sub(self.cgroup_usage.unwrap_or(0)));
        min_known(self.host_available, cgroup_free)
    }
}

/// Memory this process may use now, in bytes (see [`MemoryLimits::available`]).
pub fn available_bytes() -> Option<u64> {
    MemoryLimits::read().available()
}

fn min_known(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `(MemTotal, MemAvailable)` in bytes from the text of `/proc/meminfo`.
pub(crate) fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// A cgroup limit file's value: a byte count, or `None` for `max` (v2) or a value so large that
/// it means "no limit" (v1 writes about 2^63 rounded to pages).
pub(crate) fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
}

/// The cgroup paths of this process from the text of `/proc/self/cgroup`:
/// `(v2 path, v1 memory-controller path)`.
pub(crate) fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// `(limit, usage)` of this process's memory cgroup, walking up from its own group to the root
/// (a parent's limit binds its children too); `(None, None)` when there is no limit.
fn read_cgroup(proc: &Path, root: &Path) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(proc.join("self/cgroup")).unwrap_or_default();
    let (v2, v1) = parse_proc_cgroup(&text);
    let candidates = [
        (v2, root.to_path_buf(), "memory.max", "memory.current"),
        (
            v1,
            root.join("memory"),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
    ];
    let mut best: (Option<u64>, Option<u64>) = (None, None);
    for (path, base, limit_file, usage_file) in candidates {
        let Some(path) = path else { continue };
        // Inside a container the group's own path is often not visible under its name: the
        // namespace root is then the group itself. Try the named group and its parents, then the
        // mount's root.
        let mut rel = Path::new(path.trim_start_matches('/')).to_path_buf();
        loop {
            let dir = base.join(&rel);
            if let Some(limit) = std::fs::read_to_string(dir.join(limit_file))
                .ok()
                .and_then(|t| parse_limit(&t))
            {
                let usage = std::fs::read_to_string(dir.join(usage_file))
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                let free = limit.saturating_sub(usage.unwrap_or(0));
                let best_free = best.0.map(|l| l.saturating_sub(best.1.unwrap_or(0)));
                if best_free.is_none_or(|b| free < b) {
                    best = (Some(limit), usage);
                }
            }
            if !rel.pop() {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            (Some(24_000_000 * 1024), Some(12_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("garbage"), (None, None));
    }

    #[test]
    fn cgroup_limits_parse_max_and_huge_as_unlimited() {
        assert_eq!(parse_limit("3221225472\n"), Some(3 << 30));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn proc_cgroup_names_v2_and_v1_memory_paths() {
        assert_eq!(
            parse_proc_cgroup("0::/user.slice/job\n"),
            (Some("/user.slice/job".into()), None)
        );
        assert_eq!(
            parse_proc_cgroup("4:cpu,cpuacct:/a\n3:memory:/docker/abc\n0::/\n"),
            (Some("/".into()), Some("/docker/abc".into()))
        );
    }

    #[test]
    fn the_smaller_of_host_and_cgroup_wins() {
        let m = MemoryLimits {
            host_total: Some(24 << 30),
            host_available: Some(20 << 30),
            cgroup_limit: Some(3 << 30),
            cgroup_usage: Some(1 << 30),
        };
        assert_eq!(m.total(), Some(3 << 30));
        assert_eq!(m.available(), Some(2 << 30));
        let host_only = MemoryLimits {
            cgroup_limit: None,
            cgroup_usage: None,
            ..m
        };
        assert_eq!(host_only.total(), Some(24 << 30));
        assert_eq!(host_only.available(), Some(20 << 30));
        assert_eq!(MemoryLimits::default().available(), None);
    }

    #[test]
    fn a_container_limit_is_read_from_files() {
        let dir = std::env::temp_dir().join(format!("arraydrain-sysmem-{}", std::process::id()));
        let proc = dir.join("proc");
        let cg = dir.join("cg");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::create_dir_all(cg.join("job")).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 25165824 kB\nMemAvailable: 20971520 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("self/cgroup"), "0::/job\n").unwrap();
        std::fs::write(cg.join("job/memory.max"), "3221225472\n").unwrap();
        std::fs::write(cg.join("job/memory.current"), "1073741824\n").unwrap();
        std::fs::write(cg.join("memory.max"), "max\n").unwrap();
        let m = MemoryLimits::read_from(&proc, &cg);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.cgroup_limit, Some(3 << 30));
        assert_eq!(m.total(), Some(3 << 30));
        assert_eq!(m.available(), Some(2 << 30));
    }
}
