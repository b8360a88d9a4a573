//! Filling the kernel's scope maps from configuration.
//!
//! - `watched_prefixes` (LPM trie over path bytes): each watched directory
//!   as given and canonicalised, with a trailing `/`, so `/phi` matches
//!   `/phi/chart.pdf` but not `/phix`; and followed by a NUL, so the
//!   directory itself (`chmod /phi`) matches too.
//! - `watched_dirs` (device, inode): the same directories and the roots of
//!   file systems mounted below them. The kernel walks an opened file's
//!   directories up to its file system's root against this map, so a file
//!   is matched whatever path led to it (relative, through a directory
//!   descriptor, a symlink or a bind mount); failed opens and other path
//!   syscalls use it for relative paths.
//! - `watched_devs`: the devices of those directories, so a file on any
//!   other file system is out of scope without the walk.
//! - `scope_uids`, `scope_cgroups`: the listed uids and cgroup ids; the
//!   include/exclude mode is a load-time global (see `loader.rs`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use tracing::{info, warn};

use crate::config::{Config, Scope};
use crate::error::{Error, Result};
use crate::record::InodeKey;
use crate::record::layout::PATH_LEN;

/// Fills every scope map of a freshly loaded object.
pub fn fill(ebpf: &mut Ebpf, config: &Config) -> Result<()> {
    let mut prefixes: LpmTrie<&mut MapData, [u8; PATH_LEN], u32> =
        LpmTrie::try_from(map(ebpf, "watched_prefixes")?).map_err(map_error("watched_prefixes"))?;
    for watched in &config.watch {
        for prefix in prefix_forms(watched) {
            let (bits, data) = prefix_key(&prefix)?;
            prefixes
                .insert(&Key::new(bits, data), 1, 0)
                .map_err(map_error("watched_prefixes"))?;
            if !prefix.ends_with('\0') {
                info!(prefix = %prefix, "Watching");
            }
        }
    }

    let keys = watched_dir_keys(config);
    let mut dirs: HashMap<&mut MapData, InodeKey, u32> =
        HashMap::try_from(map(ebpf, "watched_dirs")?).map_err(map_error("watched_dirs"))?;
    for key in &keys {
        dirs.insert(key, 1, 0).map_err(map_error("watched_dirs"))?;
    }
    let mut devs: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(map(ebpf, "watched_devs")?).map_err(map_error("watched_devs"))?;
    for key in &keys {
        devs.insert(key.dev, 1, 0)
            .map_err(map_error("watched_devs"))?;
    }

    let uids = match &config.uids {
        Scope::All => &[][..],
        Scope::Only(list) | Scope::AllBut(list) => list.as_slice(),
    };
    let mut uid_map: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(map(ebpf, "scope_uids")?).map_err(map_error("scope_uids"))?;
    for uid in uids {
        uid_map.insert(uid, 1, 0).map_err(map_error("scope_uids"))?;
    }

    let cgroups = match &config.cgroups {
        Scope::All => &[][..],
        Scope::Only(list) | Scope::AllBut(list) => list.as_slice(),
    };
    let mut cgroup_map: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(map(ebpf, "scope_cgroups")?).map_err(map_error("scope_cgroups"))?;
    for dir in cgroups {
        // The cgroup v2 id of a cgroup is the inode number of its directory.
        let id = std::fs::metadata(dir)
            .map_err(|source| Error::WatchPath {
                path: dir.clone(),
                source,
            })?
            .ino();
        cgroup_map
            .insert(id, 1, 0)
            .map_err(map_error("scope_cgroups"))?;
    }
    Ok(())
}

/// The (device, inode) of each watched directory that exists and of every
/// file system mounted below one.
fn watched_dir_keys(config: &Config) -> Vec<InodeKey> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut keys = Vec::new();
    for watched in &config.watch {
        let mut roots = vec![watched.clone()];
        if let Ok(canonical) = std::fs::canonicalize(watched) {
            roots.extend(mounts_below(&mountinfo, &canonical));
        }
        for dir in roots {
            match std::fs::metadata(&dir) {
                Ok(meta) => {
                    keys.push(InodeKey {
                        ino: meta.ino(),
                        dev: kernel_dev(meta.dev()),
                        reserved: 0,
                    });
                    if dir != *watched {
                        info!(mount = %dir.display(), "Watching a mount below a watched directory");
                    }
                }
                Err(e) => warn!(
                    path = %dir.display(),
                    error = %e,
                    "Watched directory does not exist yet; only absolute paths under it are matched"
                ),
            }
        }
    }
    keys
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or(Error::MissingMap(name))
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |error| Error::Map {
        map,
        source: Box::new(error),
    }
}

/// The trie keys of a watched directory, for each spelling the kernel may
/// see (as configured and, when it differs, canonicalised): the directory
/// with a trailing `/`, a prefix of everything below it, and the directory
/// itself followed by the string's terminating NUL, which matches only the
/// directory (the kernel looks paths up with their NUL, so `/phi\0`
/// matches a chmod of `/phi` but not `/phix`).
pub fn prefix_forms(watched: &Path) -> Vec<String> {
    let mut spellings = vec![with_slash(watched)];
    if let Ok(canonical) = std::fs::canonicalize(watched) {
        let canonical = with_slash(&canonical);
        if canonical != spellings[0] {
            spellings.push(canonical);
        }
    }
    let mut forms = Vec::new();
    for below in spellings {
        let itself = match below.trim_end_matches('/') {
            "" => "/".to_owned(),
            dir => dir.to_owned(),
        };
        forms.push(below);
        forms.push(format!("{itself}\0"));
    }
    forms
}

fn with_slash(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.ends_with('/') {
        text.into_owned()
    } else {
        format!("{text}/")
    }
}

/// The LPM key of a prefix: its length in bits and its bytes.
pub fn prefix_key(prefix: &str) -> Result<(u32, [u8; PATH_LEN])> {
    let bytes = prefix.as_bytes();
    if bytes.len() >= PATH_LEN {
        return Err(Error::Setting(format!(
            "watched path {prefix} is longer than {} bytes",
            PATH_LEN - 1
        )));
    }
    let mut data = [0u8; PATH_LEN];
    data[..bytes.len()].copy_from_slice(bytes);
    Ok(((bytes.len() * 8) as u32, data))
}

/// A `stat` device number (glibc encoding) as the kernel's internal
/// `s_dev` (major << 20 | minor).
pub fn kernel_dev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((major << 20) | minor) as u32
}

/// Mount points strictly below `dir`, from `/proc/self/mountinfo` text
/// (field 5, with the kernel's octal escapes for space, tab, newline and
/// backslash undone).
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_point(field)))
        .filter(|mount| mount != dir && mount.starts_with(dir))
        .collect()
}

fn unescape_mount_point(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Watched directories as paths (for logs and tests).
pub fn describe(watch: &[PathBuf]) -> String {
    watch
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_with_a_slash_so_siblings_do_not_match() {
        assert_eq!(with_slash(Path::new("/phi")), "/phi/");
        assert_eq!(with_slash(Path::new("/phi/")), "/phi/");
        let (bits, data) = prefix_key("/phi/").expect("short");
        assert_eq!(bits, 40);
        assert_eq!(&data[..5], b"/phi/");
        assert_eq!(data[5], 0);
    }

    #[test]
    fn the_directory_itself_is_matched_through_its_nul() {
        let dir = tempfile::tempdir().expect("temp dir");
        let canonical = std::fs::canonicalize(dir.path()).expect("canonical");
        let forms = prefix_forms(dir.path());
        let text = canonical.to_str().expect("utf-8");
        assert!(forms.contains(&format!("{text}/")), "{forms:?}");
        assert!(forms.contains(&format!("{text}\0")), "{forms:?}");
        let (bits, data) = prefix_key("/phi\0").expect("short");
        assert_eq!(bits, 40, "the NUL is part of the key");
        assert_eq!(&data[..5], b"/phi\0");
        assert_eq!(prefix_forms(Path::new("/"))[1], "/\0");
    }

    #[test]
    fn mounts_below_a_watched_directory_are_found_with_their_escapes_undone() {
        let mountinfo = "\
22 1 254:0 / / rw - ext4 /dev/vda rw
30 22 0:26 / /srv/phi/scans rw - tmpfs tmpfs rw
31 22 0:27 / /srv/phi/old\\040notes rw - tmpfs tmpfs rw
32 22 0:28 / /srv/phix rw - tmpfs tmpfs rw
33 22 0:29 / /srv/phi rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_below(mountinfo, Path::new("/srv/phi")),
            vec![
                PathBuf::from("/srv/phi/scans"),
                PathBuf::from("/srv/phi/old notes")
            ]
        );
    }

    #[test]
    fn overlong_prefixes_are_refused() {
        assert!(prefix_key(&"a".repeat(PATH_LEN)).is_err());
    }

    #[test]
    fn device_numbers_convert_to_the_kernel_encoding() {
        // 8:1 (sda1): glibc makedev = 0x801; kernel = 8 << 20 | 1.
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        // 259:65536 (large minor): glibc puts the high minor bits at 12..
        let glibc = (259u64 << 8) | ((65536u64 & !0xff) << 12);
        assert_eq!(kernel_dev(glibc), (259 << 20) | 65536);
    }

    #[test]
    fn the_kernel_device_of_a_directory_matches_proc_self_mountinfo() {
        // A self-check of kernel_dev against the kernel's own view: the
        // st_dev of / converted must equal the major:minor mountinfo shows.
        let meta = std::fs::metadata("/").expect("stat /");
        let kdev = kernel_dev(meta.dev());
        let (major, minor) = (kdev >> 20, kdev & 0xfffff);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let wanted = format!("{major}:{minor}");
        assert!(
            mountinfo
                .lines()
                .any(|line| line.split(' ').nth(2) == Some(wanted.as_str())),
            "{wanted} not in mountinfo"
        );
    }
}
