//! Opens that name a watched file by a relative path are matched by the
//! directories the file is in, not by the path's text: through a directory
//! descriptor (`openat(dirfd, "x")`), and relative to a working directory
//! that is itself not watched (`cat phi/x` from phi's parent). The events
//! carry the absolute path. Relative opens of unwatched files stay silent,
//! and so do those on file systems without a watched directory.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Collector, Published, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

/// openat(2)'s number, for perl's syscall().
#[cfg(target_arch = "x86_64")]
const SYS_OPENAT: u32 = 257;
#[cfg(target_arch = "aarch64")]
const SYS_OPENAT: u32 = 56;

/// fchownat(2) and fchmodat2(2), for perl's syscall().
#[cfg(target_arch = "x86_64")]
const SYS_FCHOWNAT: u32 = 260;
#[cfg(target_arch = "aarch64")]
const SYS_FCHOWNAT: u32 = 54;
const SYS_FCHMODAT2: u32 = 452;

const ENOENT: i32 = 2;

/// Runs perl: opens DIR as a directory descriptor, then openat(dirfd, NAME)
/// for each name; prints each result (a descriptor or -errno).
fn openat_each(dir: &Path, names: &[&str]) -> String {
    let script = format!(
        "use Fcntl; sysopen(my $d, $ARGV[0], O_RDONLY | O_DIRECTORY) or die \"$ARGV[0]: $!\"; \
         shift @ARGV; for my $name (@ARGV) {{ my $fd = syscall({SYS_OPENAT}, fileno($d), $name, 0); \
         print $fd >= 0 ? \"$fd\\n\" : -($!+0) . \"\\n\"; }}"
    );
    let output = Command::new("perl")
        .args(["-e", &script])
        .arg(dir)
        .args(names)
        .output()
        .expect("run perl");
    assert!(
        output.status.success(),
        "perl openat: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn opens_of<'a>(events: &'a [Published], path: &Path) -> Vec<&'a vigil_schemas::Event> {
    let path = path.to_str().expect("utf-8 temp path");
    events
        .iter()
        .map(|p| &p.event)
        .filter(|e| e.kind == Kind::Open && e.path.as_deref() == Some(path))
        .collect()
}

/// The events in short (kind, comm, path, bytes), for assertion messages.
fn summary(events: &[Published]) -> String {
    let short: Vec<_> = events
        .iter()
        .map(|p| (&p.event.kind, &p.event.comm, &p.event.path, p.event.bytes))
        .collect();
    format!("{short:?}")
}

/// Asserts that of the files `cat` opened below `dir` only `file` was
/// reported (`why` says what that shows), with one read roll-up of `bytes`.
fn assert_cat_opened_only(
    events: &[Published],
    dir: &Path,
    file: &Path,
    bytes: i64,
    why: &str,
    stderr: &str,
) {
    let summary = summary(events);
    let file = file.to_str().expect("utf-8 temp path");
    assert_eq!(
        cat_opens_under(events, dir),
        vec![file],
        "{why}: {summary}\n{stderr}"
    );
    let reads = common::bytes_of(events, Kind::Read, file);
    assert_eq!(reads, vec![bytes], "its read roll-up: {summary}");
}

/// The paths of the files `cat` opened below `dir`, in event order.
fn cat_opens_under<'a>(events: &'a [Published], dir: &Path) -> Vec<&'a str> {
    let dir = dir.to_str().expect("utf-8 temp path");
    events
        .iter()
        .filter(|p| p.event.comm == "cat" && p.event.kind == Kind::Open)
        .filter_map(|p| p.event.path.as_deref())
        .filter(|path| path.starts_with(dir))
        .collect()
}

/// Writes a marker file into `watched` and reads `topic` until its open
/// arrives: by then everything the test did before is published.
async fn events_until_marker(bootstrap: &str, topic: &str, watched: &Path) -> Vec<Published> {
    let marker = watched.join("marker.txt");
    std::fs::write(&marker, b"end").expect("write marker");
    consume_until(bootstrap, topic, Duration::from_secs(30), |events| {
        !opens_of(events, &marker).is_empty()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_opens_through_a_directory_descriptor_or_an_unwatched_cwd_are_matched() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.relative", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    let outside = parent.path().join("other");
    std::fs::create_dir(&watched).expect("mkdir phi");
    std::fs::create_dir(&outside).expect("mkdir other");
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    let by_dirfd = watched.join("by-dirfd.txt");
    let by_cwd = watched.join("by-cwd.txt");
    let unwatched = outside.join("by-dirfd.txt");
    std::fs::write(&by_dirfd, b"dirfd").expect("write");
    std::fs::write(&by_cwd, b"cwd").expect("write");
    std::fs::write(&unwatched, b"unwatched").expect("write");

    let results = openat_each(&watched, &["by-dirfd.txt", "missing.txt"]);
    let mut lines = results.lines();
    assert!(
        lines
            .next()
            .is_some_and(|fd| fd.parse::<i32>().is_ok_and(|fd| fd >= 0)),
        "openat(phi, by-dirfd.txt) succeeds: {results}"
    );
    assert_eq!(
        lines.next(),
        Some("-2"),
        "openat(phi, missing.txt) fails with ENOENT"
    );
    let unwatched_result = openat_each(&outside, &["by-dirfd.txt"]);
    assert!(
        !unwatched_result.starts_with('-'),
        "openat(other, by-dirfd.txt) succeeds: {unwatched_result}"
    );
    // `cat phi/by-cwd.txt` from phi's parent, which is not watched.
    let cat = Command::new("cat")
        .arg("phi/by-cwd.txt")
        .current_dir(parent.path())
        .output()
        .expect("run cat");
    assert_eq!(cat.stdout, b"cwd", "cat read the file");
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    let summary: Vec<_> = events
        .iter()
        .map(|p| (&p.event.kind, &p.event.comm, &p.event.path, p.event.errno))
        .collect();

    let dirfd_opens = opens_of(&events, &by_dirfd);
    assert!(
        dirfd_opens.iter().any(|e| e.comm == "perl" && e.errno == 0),
        "openat(dirfd of phi, \"by-dirfd.txt\") is reported with its absolute path: \
         {summary:?}\n{stderr}"
    );
    let missing_opens = opens_of(&events, &watched.join("missing.txt"));
    assert!(
        missing_opens
            .iter()
            .any(|e| e.comm == "perl" && e.errno == ENOENT),
        "the failed openat(dirfd of phi, \"missing.txt\") is reported with ENOENT: {summary:?}"
    );
    let cwd_opens = opens_of(&events, &by_cwd);
    assert!(
        cwd_opens.iter().any(|e| e.comm == "cat" && e.errno == 0),
        "cat phi/by-cwd.txt from an unwatched directory is reported: {summary:?}"
    );
    assert!(
        events.iter().all(|p| {
            let path = p.event.path.as_deref().unwrap_or_default();
            !path.starts_with(outside.to_str().expect("utf-8")) && !path.ends_with("/other")
        }),
        "nothing about the unwatched directory or its file: {summary:?}"
    );
}

/// A watched file opened by an absolute path through a symbolic link to
/// its directory: the path's text misses the watched prefixes, the opened
/// file's directories do not. The open and its read roll-up carry the
/// file's own path. Before session 18 only relative paths were matched by
/// directory, so `cat /tmp/link/chart.txt` with `/tmp/link -> /srv/phi`
/// read PHI unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_path_through_a_symlink_to_a_watched_directory_is_matched() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.symlink", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    std::fs::create_dir(&watched).expect("mkdir phi");
    let link = parent.path().join("link");
    std::os::unix::fs::symlink(&watched, &link).expect("symlink");
    let chart = watched.join("chart.txt");
    std::fs::write(&chart, vec![b'x'; 3_000]).expect("write");
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    let through_link = link.join("chart.txt");
    let cat = Command::new("cat")
        .arg(&through_link)
        .output()
        .expect("run cat");
    assert_eq!(
        cat.stdout.len(),
        3_000,
        "cat read the file through the link"
    );
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    let summary = summary(&events);
    assert!(
        opens_of(&events, &chart)
            .iter()
            .any(|e| e.comm == "cat" && e.errno == 0),
        "cat {} is reported as an open of {}: {summary}\n{stderr}",
        through_link.display(),
        chart.display()
    );
    let reads = common::bytes_of(&events, Kind::Read, chart.to_str().expect("utf-8"));
    assert_eq!(reads, vec![3_000], "its read roll-up: {summary}");
    assert!(
        events
            .iter()
            .all(|p| p.event.path.as_deref() != Some(through_link.to_str().expect("utf-8"))),
        "no event names the link's path: {summary}"
    );
}

/// A path through `..` goes where the kernel resolves it, not where its
/// text starts: `phi/../outside.txt` opens a file outside the watched
/// directory and is not reported; `phi/sub/../chart.txt` opens a watched
/// file and is reported by its own path, with its read roll-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_path_with_dotdot_is_matched_by_the_file_it_opens() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.dotdot", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    std::fs::create_dir_all(watched.join("sub")).expect("mkdir phi/sub");
    let outside = parent.path().join("outside.txt");
    std::fs::write(&outside, b"not phi").expect("write outside");
    let chart = watched.join("chart.txt");
    std::fs::write(&chart, vec![b'x'; 2_000]).expect("write chart");
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    let escaping = watched.join("../outside.txt");
    let staying = watched.join("sub/../chart.txt");
    for path in [&escaping, &staying] {
        let cat = Command::new("cat").arg(path).output().expect("run cat");
        assert!(cat.status.success(), "cat {}", path.display());
    }
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    assert_cat_opened_only(
        &events,
        parent.path(),
        &chart,
        2_000,
        "only the watched file is reported, by its own path",
        &stderr,
    );
}

/// A tmpfs mounted at `dir` for the life of the guard.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "vigil-test"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The kernel skips the directory walk for files on a file system that
/// holds no watched directory (the `watched_devs` map). A file system
/// mounted below the watched directory is one that does: a relative open
/// of a file on it is reported, by its absolute path, while the same open
/// on another tmpfs outside the scope is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_mounted_below_a_watched_directory_is_in_scope_and_another_is_not() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.mounts", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    let inner = Tmpfs::mount(&watched.join("scans"));
    let outer = Tmpfs::mount(&parent.path().join("other"));
    let scan = inner.0.join("ct.txt");
    std::fs::write(&scan, vec![b's'; 1_500]).expect("write scan");
    std::fs::write(outer.0.join("notes.txt"), b"not phi").expect("write notes");
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    for (cwd, file) in [(&watched, "scans/ct.txt"), (&outer.0, "notes.txt")] {
        let cat = Command::new("cat")
            .arg(file)
            .current_dir(cwd)
            .output()
            .expect("run cat");
        assert!(cat.status.success(), "cat {file} in {}", cwd.display());
    }
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    assert_cat_opened_only(
        &events,
        parent.path(),
        &scan,
        1_500,
        "the file on the mount below phi is reported by its absolute path, the one on \
         the other tmpfs is not",
        &stderr,
    );
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)` and `fchmodat2(fd, "", mode,
/// AT_EMPTY_PATH)` change the file open on `fd`, as fchown and fchmod do;
/// their empty path names nothing to match. Before session 20 they were
/// not reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chown_and_chmod_of_a_watched_descriptor_through_an_empty_path_are_reported() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.empty_path", 1).await;
    let watched = tempfile::tempdir().expect("temp dir");
    let chart = watched.path().join("chart.txt");
    std::fs::write(&chart, b"x").expect("write chart");
    let collector = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);

    const AT_EMPTY_PATH: u32 = 0x1000;
    let script = format!(
        "use Fcntl; sysopen(my $f, $ARGV[0], O_RDONLY) or die \"$ARGV[0]: $!\"; my $e = \"\"; \
         my $c = syscall({SYS_FCHOWNAT}, fileno($f), $e, 65534, -1, {AT_EMPTY_PATH}); \
         my $m = syscall({SYS_FCHMODAT2}, fileno($f), $e, 0600, {AT_EMPTY_PATH}); \
         print \"$c $m\\n\"; $c == 0 && $m == 0 or die \"fchownat/fchmodat2: $!\";"
    );
    let perl = Command::new("perl")
        .args(["-e", &script])
        .arg(&chart)
        .output()
        .expect("run perl");
    assert!(
        perl.status.success(),
        "perl: {} {}",
        String::from_utf8_lossy(&perl.stdout),
        String::from_utf8_lossy(&perl.stderr)
    );
    let events = events_until_marker(broker.bootstrap(), &topic, watched.path()).await;
    let stderr = collector.stop();
    let summary: Vec<_> = events
        .iter()
        .map(|p| (&p.event.kind, &p.event.comm, &p.event.path, p.event.mode))
        .collect();
    let path = chart.to_str().expect("utf-8");
    let of = |kind: Kind| {
        events
            .iter()
            .map(|p| &p.event)
            .find(|e| e.kind == kind && e.comm == "perl" && e.path.as_deref() == Some(path))
    };
    let chown = of(Kind::Chown)
        .unwrap_or_else(|| panic!("fchownat(fd, \"\") is reported: {summary:?}\n{stderr}"));
    assert_eq!(
        (chown.errno, chown.target_id),
        (0, Some(65534)),
        "{chown:?}"
    );
    let chmod = of(Kind::Chmod)
        .unwrap_or_else(|| panic!("fchmodat2(fd, \"\") is reported: {summary:?}\n{stderr}"));
    assert_eq!((chmod.errno, chmod.mode), (0, Some(0o600)), "{chmod:?}");
}

/// A directory whose file was opened while it was outside the watched one,
/// then moved into it: the next open there is reported at once. The kernel
/// remembers directories whose walk found no watched directory
/// (`outside_dirs`, for up to a second), and a rename voids what it
/// remembers. perl does it all in one process within milliseconds, so
/// without that voiding the open after the move would be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_into_a_watched_one_is_in_scope_at_once() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.moved-dir", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    let drafts = parent.path().join("drafts");
    std::fs::create_dir(&watched).expect("mkdir phi");
    std::fs::create_dir(&drafts).expect("mkdir drafts");
    std::fs::write(drafts.join("note.txt"), b"draft").expect("write");
    let moved = watched.join("drafts");
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    // Relative opens from inside drafts, so only its directories (not the
    // path's text) can put them in scope; the working directory follows
    // the move.
    let script = "chdir $ARGV[0] or die \"chdir: $!\"; \
         for (1..3) { open(my $f, '<', 'note.txt') or die \"open: $!\"; my $x = <$f>; close $f; } \
         rename($ARGV[0], $ARGV[1]) or die \"rename: $!\"; \
         open(my $f, '<', 'note.txt') or die \"open after the move: $!\"; print scalar <$f>;";
    let output = Command::new("perl")
        .args(["-e", script])
        .arg(&drafts)
        .arg(&moved)
        .output()
        .expect("run perl");
    assert_eq!(
        output.stdout,
        b"draft",
        "perl read the moved file: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    let summary = summary(&events);
    let after = opens_of(&events, &moved.join("note.txt"));
    assert_eq!(
        after
            .iter()
            .filter(|e| e.comm == "perl" && e.errno == 0)
            .count(),
        1,
        "the open after the move is reported, by the file's new path: {summary}\n{stderr}"
    );
    assert!(
        opens_of(&events, &drafts.join("note.txt")).is_empty(),
        "the opens before the move were outside the watched directory: {summary}"
    );
}

/// Files nested deeper below the watched directory than the kernel walks
/// inline (32 directories for the scope, 64 for the path): the walks go on
/// in a bpf_loop, so nesting a file deeper does not hide it, and the event
/// still carries its whole absolute path. The same nesting outside the
/// watched directory, on the same file system, stays silent: the deep
/// walk reaches the root and finds no watched directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_nested_deeper_than_the_inline_walks_are_matched_by_their_directories() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.deep", 1).await;
    let parent = tempfile::tempdir().expect("temp dir");
    let watched = parent.path().join("phi");
    let nested =
        |top: &Path, levels: usize| (0..levels).fold(top.to_path_buf(), |p, _| p.join("d"));
    let deep = nested(&watched, 40);
    let deeper = nested(&watched, 70);
    let outside = nested(&parent.path().join("other"), 40);
    for dir in [&deeper, &outside] {
        std::fs::create_dir_all(dir).expect("mkdir -p");
    }
    for dir in [&deep, &deeper, &outside] {
        std::fs::write(dir.join("note.txt"), b"deep").expect("write");
    }
    let collector = Collector::start(broker.bootstrap(), &topic, &watched, &[]);

    // Relative opens, so only the file's directories can put them in scope.
    let script = "for my $dir (@ARGV) { chdir $dir or die \"chdir $dir: $!\"; \
         open(my $f, '<', 'note.txt') or die \"open in $dir: $!\"; my $x = <$f>; close $f; }";
    let output = Command::new("perl")
        .args(["-e", script])
        .args([&deep, &deeper, &outside])
        .output()
        .expect("run perl");
    assert!(
        output.status.success(),
        "perl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = events_until_marker(broker.bootstrap(), &topic, &watched).await;
    let stderr = collector.stop();
    let summary = summary(&events);
    for dir in [&deep, &deeper] {
        let opened = opens_of(&events, &dir.join("note.txt"));
        assert_eq!(
            opened
                .iter()
                .filter(|e| e.comm == "perl" && e.errno == 0)
                .count(),
            1,
            "the open {} levels below the watched directory is reported by its absolute path: \
             {summary}\n{stderr}",
            dir.components().count() - watched.components().count()
        );
    }
    let outside = outside.to_str().expect("utf-8 temp path");
    let silent: Vec<_> = events
        .iter()
        .filter(|p| p.event.comm == "perl" && p.event.kind == Kind::Open)
        .filter(|p| {
            let path = p.event.path.as_deref().unwrap_or_default();
            path.starts_with(outside) || path == "note.txt"
        })
        .collect();
    assert!(
        silent.is_empty(),
        "the open outside the watched directory stays silent: {summary}"
    );
}
