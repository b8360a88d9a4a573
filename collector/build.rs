//! Builds the kernel side and measures its record layout.
//!
//! 1. `vmlinux.h`: generated from the running kernel's BTF with `bpftool`
//!    when it can be, else the committed copy in `collector-ebpf/include/`.
//! 2. `collector-ebpf/src/vigil.bpf.c` → `$OUT_DIR/vigil.bpf.o` with
//!    `clang -O2 -g -target bpf` (CO-RE: the loader relocates field offsets
//!    against the target kernel's BTF).
//! 3. A host C program includes `vigil_record.h` and prints the offset and
//!    size of every field, the struct sizes and the kind numbers as Rust
//!    (`$OUT_DIR/layout.rs`); `record.rs` checks its mirror against them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Fields of the shared structs, in declaration order.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "vigil_record",
        &[
            "ktime_ns",
            "cgroup_id",
            "bytes",
            "target",
            "kind",
            "err",
            "pid",
            "tid",
            "ppid",
            "uid",
            "euid",
            "gid",
            "auid",
            "flags",
            "mode",
            "args_len",
            "dirfd",
            "dirfd2",
            "family",
            "sport",
            "dport",
            "loss_mark",
            "saddr",
            "daddr",
            "comm",
            "path",
            "path2",
        ],
    ),
    ("vigil_tracked", &["read_bytes", "write_bytes", "rec"]),
    ("vigil_path_key", &["prefixlen", "data"]),
    ("vigil_inode_key", &["ino", "dev", "reserved"]),
];

const KINDS: &[&str] = &[
    "EXEC", "EXIT", "OPEN", "READ", "WRITE", "RENAME", "UNLINK", "TRUNCATE", "CHMOD", "CHOWN",
    "CONNECT", "ACCEPT", "SEND", "RECV", "SETUID", "SETGID", "CAPSET", "MAX",
];

fn main() -> Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../collector-ebpf");
    let src = ebpf.join("src");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Relative to this package, so a build cache shared by checkouts at
    // different paths watches the sources of the checkout being built.
    for file in ["src/vigil.bpf.c", "src/vigil_record.h", "include/vmlinux.h"] {
        println!("cargo:rerun-if-changed=../collector-ebpf/{file}");
    }
    println!("cargo:rerun-if-env-changed=VIGIL_CLANG");
    let clang = std::env::var("VIGIL_CLANG").unwrap_or_else(|_| "clang".to_owned());

    let include = out.join("include");
    std::fs::create_dir_all(&include)?;
    write_vmlinux_h(&include.join("vmlinux.h"), &ebpf.join("include/vmlinux.h"))?;

    let object = out.join("vigil.bpf.o");
    run(Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function"])
        .arg(format!("-D__TARGET_ARCH_{}", target_arch()))
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&src)
        .arg("-c")
        .arg(src.join("vigil.bpf.c"))
        .arg("-o")
        .arg(&object))
    .context("compiling collector-ebpf/src/vigil.bpf.c (needs clang and libbpf-dev: deploy/local/setup.sh installs them)")?;

    let probe_c = out.join("layout_probe.c");
    std::fs::write(&probe_c, layout_probe_source())?;
    let probe = out.join("layout_probe");
    run(Command::new(&clang)
        .arg("-I")
        .arg(&src)
        .arg(&probe_c)
        .arg("-o")
        .arg(&probe))
    .context("compiling the record layout probe")?;
    let layout = Command::new(&probe)
        .output()
        .context("running the record layout probe")?;
    if !layout.status.success() {
        bail!("layout probe failed: {:?}", layout.status);
    }
    std::fs::write(out.join("layout.rs"), layout.stdout)?;
    Ok(())
}

/// The running kernel's BTF as C, or the committed copy when bpftool or BTF
/// is not available here.
fn write_vmlinux_h(dest: &Path, fallback: &Path) -> Result<()> {
    let generated = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output();
    match generated {
        Ok(output) if output.status.success() && !output.stdout.is_empty() => {
            std::fs::write(dest, output.stdout)?;
        }
        _ => {
            println!(
                "cargo:warning=bpftool could not dump /sys/kernel/btf/vmlinux; using {}",
                fallback.display()
            );
            std::fs::copy(fallback, dest)
                .with_context(|| format!("copying {}", fallback.display()))?;
        }
    }
    Ok(())
}

fn target_arch() -> &'static str {
    match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        _ => "x86",
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn layout_probe_source() -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/types.h>\n#include \"vigil_record.h\"\n\n\
         #define FIELD(s, f) printf(\"    (\\\"%s\\\", \\\"%s\\\", %zu, %zu),\\n\", #s, #f, \
         offsetof(struct s, f), sizeof(((struct s *)0)->f))\n\nint main(void)\n{\n",
    );
    c.push_str("\tprintf(\"// Generated by collector/build.rs from vigil_record.h.\\n\");\n");
    for (name, _) in FIELDS {
        c.push_str(&format!(
            "\tprintf(\"pub const SIZE_{upper}: usize = %zu;\\n\", sizeof(struct {name}));\n",
            upper = name.to_uppercase()
        ));
    }
    for kind in KINDS {
        c.push_str(&format!(
            "\tprintf(\"pub const KIND_{kind}: u32 = %d;\\n\", VIGIL_KIND_{kind});\n"
        ));
    }
    for loss in ["LOSS_UNTRACKED", "DROPS_MAX"] {
        c.push_str(&format!(
            "\tprintf(\"pub const {loss}: u32 = %d;\\n\", VIGIL_{loss});\n"
        ));
    }
    for constant in ["COMM_LEN", "PATH_LEN", "ADDR_LEN"] {
        c.push_str(&format!(
            "\tprintf(\"pub const {constant}: usize = %d;\\n\", VIGIL_{constant});\n"
        ));
    }
    c.push_str("\tprintf(\"pub const AUID_UNSET: u32 = %u;\\n\", VIGIL_AUID_UNSET);\n");
    for mode in ["ALL", "INCLUDE", "EXCLUDE"] {
        c.push_str(&format!(
            "\tprintf(\"pub const SCOPE_{mode}: u32 = %d;\\n\", VIGIL_SCOPE_{mode});\n"
        ));
    }
    c.push_str("\tprintf(\"/// (struct, field, offset, size) of every shared field.\\n\");\n");
    c.push_str("\tprintf(\"pub const FIELDS: &[(&str, &str, usize, usize)] = &[\\n\");\n");
    for (name, fields) in FIELDS {
        for field in *fields {
            c.push_str(&format!("\tFIELD({name}, {field});\n"));
        }
    }
    c.push_str("\tprintf(\"];\\n\");\n\treturn 0;\n}\n");
    c
}
