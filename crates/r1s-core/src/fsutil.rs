//! Small file helpers shared by the crates that write artifacts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file, streamed (never the whole file in memory).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` through a temporary file beside it, synced and renamed into place:
/// readers see the old content or the new one, never a part. See [`AtomicFile`] for the rules.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// An output file written through a temporary file beside its destination and renamed over it when
/// [`AtomicFile::commit`] is called.
///
/// - The temporary file's name is unique to its writer (`.NAME.XXXXXX.tmp`, created with
///   `O_EXCL` by the `tempfile` crate), so two writers of one path never share or mix bytes: the last
///   to commit wins whole.
/// - Dropped without a commit (an error, a panic, a cancelled run), the temporary file is removed:
///   nothing that looks finished, and nothing left behind. A process killed outright leaves a hidden
///   `.NAME.*.tmp`, never the destination's name.
/// - Writes are buffered; `commit` flushes, syncs the data to disk, then renames.
#[derive(Debug)]
pub struct AtomicFile {
    out: std::io::BufWriter<tempfile::NamedTempFile>,
    dest: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file beside `dest` (in `dest`'s directory, which must exist).
    pub fn create(dest: &Path) -> std::io::Result<AtomicFile> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        let prefix = format!(".{name}.");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".tmp");
        // tempfile's own default is 0600; an output gets the mode any new file gets (0666 less umask)
        #[cfg(unix)]
        b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = b.tempfile_in(dir)?;
        Ok(AtomicFile { out: std::io::BufWriter::with_capacity(1 << 16, tmp), dest: dest.to_path_buf() })
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary file's path (it moves to [`AtomicFile::dest`] on commit).
    pub fn temp_path(&self) -> &Path {
        self.out.get_ref().path()
    }

    /// Flushes, syncs and renames the temporary file over the destination.
    pub fn commit(self) -> std::io::Result<()> {
        let tmp = self.out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.dest).map_err(|e| e.error)?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::{AtomicFile, write_atomic};
    use std::io::Write;

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn two_writers_of_one_path_never_mix_and_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.jsonl");
        let (mut a, mut b) = (AtomicFile::create(&path).unwrap(), AtomicFile::create(&path).unwrap());
        assert_ne!(a.temp_path(), b.temp_path());
        for i in 0..1000 {
            writeln!(a, "a{i}").unwrap();
            writeln!(b, "b{i}").unwrap();
        }
        assert!(!path.exists(), "nothing under the target's name before a commit");
        b.commit().unwrap();
        a.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().all(|l| l.starts_with('a')), "the last to commit wins whole");
        // dropped without a commit: the temporary file goes, the target stays as it was
        let mut c = AtomicFile::create(&path).unwrap();
        writeln!(c, "partial").unwrap();
        drop(c);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(entries(d.path()), ["out.jsonl"]);
        write_atomic(&d.path().join("x.txt"), b"x").unwrap();
        assert_eq!(entries(d.path()), ["out.jsonl", "x.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn an_output_gets_the_mode_of_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::File::create(d.path().join("plain")).unwrap();
        write_atomic(&d.path().join("atomic"), b"x").unwrap();
        let mode = |n: &str| std::fs::metadata(d.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("atomic"), mode("plain"));
    }
}
