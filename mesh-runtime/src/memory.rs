//! Keeping the resident size to what a server uses while it serves.
//!
//! Reading configuration runs code the request path never touches (YAML,
//! protobuf reflection over Envoy's descriptor set, validation) and
//! allocates a large descriptor pool. Once a configuration is in force,
//! the freed heap goes back to the kernel and the executable's pages that
//! only start-up used are unmapped: they stay in the page cache, and
//! whatever is still needed faults back in (a minor fault, no disk read).
//! What remains resident is the serving working set. Both the proxy and
//! pilot cap malloc's arenas: memory one thread frees is what the next
//! allocation on another reuses.

/// Gives freed heap and the pages of start-up code back to the system.
pub fn release_after_config() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    drop_clean_executable_pages();
}

/// Caps glibc's malloc arenas at one per worker thread: by default every
/// thread that allocates may get its own arena (up to 8 per core), and
/// memory freed in one is not reused by another.
pub fn limit_malloc_arenas(workers: usize) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before the
    // worker threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, workers.max(1) as libc::c_int);
    }
}

/// Unmaps the read-only pages of the proxy's own executable that hold no
/// private changes (code and constant data: `Anonymous: 0 kB` in smaps).
/// They refault from the page cache on their next use. Mappings with
/// private copies (relocated read-only data) are left alone: dropping
/// those would lose the relocations. Returns the kB unmapped.
pub fn drop_clean_executable_pages() -> u64 {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let mut dropped = 0;
    for m in mappings(&smaps) {
        let read_only = m.perms.starts_with('r') && m.perms.as_bytes().get(1) == Some(&b'-');
        if !read_only || m.path != exe || m.anonymous_kb != 0 || m.rss_kb == 0 {
            continue;
        }
        // SAFETY: the range is a private, read-only mapping of our own
        // executable without private pages, so MADV_DONTNEED changes no
        // content: the next access maps the same file page again.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            dropped += m.rss_kb;
        }
    }
    dropped
}

/// One mapping of /proc/self/smaps.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
    rss_kb: u64,
    anonymous_kb: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("");
            // offset, device, inode, then the path (which may hold spaces).
            let path = line
                .splitn(6, char::is_whitespace)
                .nth(5)
                .unwrap_or("")
                .trim_start();
            out.push(Mapping {
                start,
                end,
                perms,
                path,
                rss_kb: 0,
                anonymous_kb: 0,
            });
        } else if let Some(m) = out.last_mut() {
            let mut kb = || fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Rss:" => m.rss_kb = kb(),
                "Anonymous:" => m.anonymous_kb = kb(),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kB of the test binary's own read-only mappings.
    fn executable_rss_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        mappings(&smaps)
            .iter()
            .filter(|m| m.path == exe.to_string_lossy() && !m.perms.contains('w'))
            .map(|m| m.rss_kb)
            .sum()
    }

    #[test]
    fn reads_smaps_mappings() {
        let smaps = "\
5581a000-5581b000 r--p 00000000 fd:01 123 /usr/bin/my prog
Rss:                   4 kB
Anonymous:             0 kB
5581b000-5581d000 r-xp 00001000 fd:01 123 /usr/bin/my prog
Rss:                   8 kB
Anonymous:             4 kB
7ffd000-7ffe000 rw-p 00000000 00:00 0
Rss:                   4 kB
";
        let m = mappings(smaps);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mapping {
                start: 0x5581b000,
                end: 0x5581d000,
                perms: "r-xp",
                path: "/usr/bin/my prog",
                rss_kb: 8,
                anonymous_kb: 4,
            }
        );
        assert_eq!(m[2].path, "");
    }

    #[test]
    fn dropping_clean_pages_shrinks_rss_and_code_keeps_running() {
        let before = executable_rss_kb();
        let dropped = drop_clean_executable_pages();
        let after = executable_rss_kb();
        assert!(dropped > 0, "the test binary's code was resident");
        assert!(
            after < before,
            "executable resident {before} kB → {after} kB after dropping {dropped} kB"
        );
        // Code and constants fault back in: the standard library, the
        // formatter and this test still work.
        assert_eq!(format!("{:?}", mappings("")), "[]");
    }
}
