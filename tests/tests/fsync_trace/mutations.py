#!/usr/bin/env python3
"""The mutation table of the fsync-trace test: deletes one fsync of the production path at a
time, runs `cargo test -p kappa-tests --test fsync_trace -- --ignored` (root), and records which
checks failed. Every source file is restored after each run (also on Ctrl-C).

Run from the repository root, as root:  python3 tests/tests/fsync_trace/mutations.py [NAME...]
Appends a row per mutation to target/fsync-mutations.md. A mutation of an atomic write replaces the call by the same
steps in std::fs with one sync left out (the file's, or the directory's after the rename).
"""
import os
import re
import subprocess
import sys

def write_steps(p, b, file_sync, dir_sync):
    """An atomic write of bytes `b` to path `p` (Rust expressions) with syncs left out."""
    s = (f"{{ let p: std::path::PathBuf = ({p}).to_path_buf(); let b: &[u8] = {b}; "
         'let tmp = p.with_extension("mutated-tmp"); std::fs::write(&tmp, b).expect("mutation"); ')
    if file_sync:
        s += 'std::fs::File::open(&tmp).expect("mutation").sync_all().expect("mutation"); '
    s += 'std::fs::rename(&tmp, &p).expect("mutation"); '
    if dir_sync:
        s += 'std::fs::File::open(p.parent().expect("mutation")).expect("mutation").sync_all().expect("mutation"); '
    return s + "}"

def atomic(name, path, old, p, b, prelude="", indent="    "):
    """Two mutations of one atomic-write call: without the file sync, without the dir sync."""
    return [
        (f"{name} file", path, old, f"{indent}{prelude}{write_steps(p, b, False, True)}", 1),
        (f"{name} dir", path, old, f"{indent}{prelude}{write_steps(p, b, True, False)}", 1),
    ]

W = "storage/src/log/writer.rs"
MUTATIONS = [
    ("append fdatasync (writer.rs start_sync_if_wanted)", W,
     "        let result = file.fdatasync().await;",
     "        let result: std::io::Result<()> = { let _ = &file; Ok(()) };", 1),
    ("sync watermark fdatasync (watermark.rs write)", "storage/src/watermark.rs",
     "    file.fdatasync().await\n}", "    Ok(())\n}", 1),
    ("roll fdatasync of the sealed segment (writer.rs roll)", W,
     '        self.file.fdatasync().await.map_err(|e| ("fdatasync", self.path.clone(), e))?;', "", 1),
    *atomic("roll sealed index (writer.rs roll)", W,
            "        disk.write_file_atomic(&sealed_index_path, &sealed_index.encode())\n"
            "            .await\n            .map_err(failure(\"index write\"))?;",
            "&sealed_index_path", "&sealed_index.encode()", indent="        "),
    ("roll partition dir fsync after the next segment (writer.rs roll)", W,
     '        disk.sync_dir(&self.shared.dir).await.map_err(failure("fsync dir"))?;', "", 1),
    ("new partition: dir fsync after the first segment (recovery.rs open)",
     "storage/src/log/recovery.rs", "            disk.sync_dir(dir).await?;", "", 1),
    ("create_dir_all: parent fsync (io/mod.rs create_dir_all_in)", "storage/src/io/mod.rs",
     '        ns.sync_dir(parent).map_err(|e| Error::io("fsync dir", parent, e))?;', "", 1),
    ("write_file_atomic_in: file fsync (io/mod.rs, every atomic write)", "storage/src/io/mod.rs",
     "    if let Err(e) = ns.sync_file(&temp) {",
     "    if let Err(e) = { let _ = &temp; io::Result::Ok(()) } {", 1),
    ("write_file_atomic_in: dir fsync (io/mod.rs, every atomic write)", "storage/src/io/mod.rs",
     '    ns.sync_dir(dir).map_err(|e| Error::io("fsync dir", dir, e))',
     "    let _ = dir;\n    Ok(())", 1),
    *atomic("view checkpoint (runner.rs write_checkpoint)", "engine/src/view/runner.rs",
            "    disk.write_file_atomic_owned(path, bytes).await?;", "path", "&bytes"),
    *atomic("topic definition (meta.rs write_topic)", "engine/src/meta.rs",
            '    disk.write_file_atomic_blocking(&dir.join(format!("{name}.json")), &bytes)?;',
            'dir.join(format!("{name}.json"))', "&bytes"),
    *atomic("topic marker (meta.rs mark_deleting)", "engine/src/meta.rs",
            '    disk.write_file_atomic_blocking(&deleting_marker(data_dir, name), b"")?;',
            "deleting_marker(data_dir, name)", 'b""'),
    ("topic marker removal dir fsync (meta.rs clear_marker)", "engine/src/meta.rs",
     "    disk.sync_dir_blocking(&topics_dir(data_dir))?;", "", 1),
    ("topic deletion: topics/ fsync after the partition files (meta.rs finish_deletion)",
     "engine/src/meta.rs", "            disk.sync_dir_blocking(parent)?;", "", 1),
    ("topic deletion: dir fsync after the definition's unlink (meta.rs finish_deletion)",
     "engine/src/meta.rs", "    disk.sync_dir_blocking(&dir)?;", "", 1),
    ("topic deletion: dir fsync after the marker's unlink (meta.rs finish_deletion)",
     "engine/src/meta.rs", "    disk.sync_dir_blocking(&dir)?;", "", 2),
    *atomic("view meta.json (view/mod.rs write_meta)", "engine/src/view/mod.rs",
            '    entry.disk.write_file_atomic_blocking(&entry.dir.join("meta.json"), &bytes)?;',
            'entry.dir.join("meta.json")', "&bytes", prelude="let _ = &entry.disk; "),
    *atomic("view version mark meta/views/<name>.json (meta.rs next_view_version)",
            "engine/src/meta.rs", "    disk.write_file_atomic_blocking(&path, &bytes)?;",
            "&path", "&bytes"),
    *atomic("kafka producer-id reservation (idempotence.rs allocate)",
            "engine/src/kafka/idempotence.rs",
            "            self.disk.write_file_atomic_blocking(&self.path, end.to_string().as_bytes())?;",
            "&self.path", "s.as_bytes()", prelude="let s = end.to_string(); ", indent="            "),
    *atomic("serve view store put (store.rs write)", "tools/src/serve/store.rs",
            "        self.disk.write_file_atomic_blocking(&self.path(&specs.name), &bytes)?;",
            "self.path(&specs.name)", "&bytes", indent="        "),
    ("serve view store remove: dir fsync (store.rs remove)", "tools/src/serve/store.rs",
     "            Ok(()) => Ok(self.disk.sync_dir_blocking(&self.dir)?),",
     "            Ok(()) => Ok(()),", 1),
    ("repair: fsync after the truncation (io/mod.rs truncate_file_blocking)",
     "storage/src/io/mod.rs",
     '            ns.sync_file(path).map_err(|e| Error::io("fsync", path, e))',
     "            Ok(())", 1),
    ("repair: partition dir fsync after the unlinks (repair.rs apply)", "storage/src/repair.rs",
     "        disk.sync_dir_blocking(dir)?;", "", 1),
]

def apply(path, old, new, nth):
    text = open(path).read()
    count = text.count(old)
    if count < nth:
        sys.exit(f"{path}: {old!r} occurs {count} times, wanted occurrence {nth}")
    at = -1
    for _ in range(nth):
        at = text.index(old, at + 1)
    open(path, "w").write(text[:at] + new + text[at + len(old):])

def main():
    only = sys.argv[1:]
    if subprocess.run(["git", "diff", "--quiet", "--", "storage", "engine", "tools"]).returncode:
        sys.exit("storage/, engine/ or tools/ has uncommitted changes: commit or stash them first")
    env = dict(os.environ, CARGO_INCREMENTAL="0")
    chosen = [m for o in only for m in MUTATIONS if o in m[0]] if only else MUTATIONS
    for name, path, old, new, nth in chosen:
        print(f"== {name}", flush=True)
        try:
            apply(path, old, new, nth)
            run = subprocess.run(
                ["cargo", "test", "-p", "kappa-tests", "--test", "fsync_trace", "--",
                 "--ignored", "--nocapture"], env=env, capture_output=True, text=True)
        finally:
            subprocess.run(["git", "checkout", "--", path], check=True)
        out = run.stdout + run.stderr
        if "error[" in out or "could not compile" in out:
            verdict = "BUILD FAILED: " + "; ".join(re.findall(r"error\[.*", out)[:2])
        elif run.returncode == 0:
            verdict = "NOT CAUGHT (test passed)"
        else:
            failed, inside = [], False
            for line in out.splitlines():
                if "fsync protocol violated:" in line:
                    inside = True
                elif inside and line.startswith("  "):
                    failed.append(line.strip())
                else:
                    inside = False
            panic = re.findall(r"panicked at .*\n(.*)", out)
            # Group the failed checks by what they check (the text before the first colon).
            groups = {}
            for line in failed:
                head = line.split(":")[0]
                groups.setdefault(head, []).append(line)
            parts = []
            for head, lines in groups.items():
                parts.append(lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more {head!r})")
            verdict = "; ".join(parts) or (panic[0] if panic else "failed")
        print(f"   -> {verdict}", flush=True)
        os.makedirs("target", exist_ok=True)
        with open("target/fsync-mutations.md", "a") as f:
            f.write(f"| {name} | {verdict} |\n")

if __name__ == "__main__":
    main()
