//! The demo page and stream (`examples/web`), served under `/demo/` on the admin listener so a
//! new user sees video play through licensegate with nothing else running. Byte ranges are
//! supported because players fetch single-file DASH segments by range.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use http::{HeaderMap, Response, StatusCode, header};

pub(crate) const PREFIX: &str = "/demo/";

/// Larger files are not demo material; refusing them bounds what one request reads.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The answer to `GET /demo/...`, or `None` for a path outside the demo root. File I/O runs on
/// the blocking pool, never on the async workers that serve health checks and metrics.
pub(crate) async fn serve(
    root: &Path,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response<Vec<u8>>> {
    let relative = path.strip_prefix(PREFIX)?.to_string();
    let root = root.to_path_buf();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    tokio::task::spawn_blocking(move || serve_file(&root, &relative, range.as_deref()))
        .await
        .ok()
        .flatten()
}

fn serve_file(root: &Path, relative: &str, range: Option<&str>) -> Option<Response<Vec<u8>>> {
    let path = resolve(root, relative)?;
    let mut file = File::open(&path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > MAX_FILE_BYTES {
        return None;
    }
    let response = Response::builder()
        .header(header::CONTENT_TYPE, content_type(&path))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    match range.map(|text| byte_range(text, len)) {
        None | Some(RangeAnswer::Whole) => {
            let mut body = Vec::with_capacity(len as usize);
            file.read_to_end(&mut body).ok()?;
            response.status(StatusCode::OK).body(body).ok()
        }
        Some(RangeAnswer::Part(start, end)) => {
            let mut body = vec![0; (end - start + 1) as usize];
            file.seek(SeekFrom::Start(start)).ok()?;
            file.read_exact(&mut body).ok()?;
            response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .body(body)
                .ok()
        }
        Some(RangeAnswer::Unsatisfiable) => response
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Vec::new())
            .ok(),
    }
}

/// The file for a URL path below the root. `..`, absolute paths, dotfiles (`.git`, `.env`)
/// and symbolic links leading out of the root never resolve.
fn resolve(root: &Path, relative: &str) -> Option<PathBuf> {
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let mut file = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) if !part.as_encoded_bytes().starts_with(b".") => {
                file.push(part)
            }
            _ => return None,
        }
    }
    let real_root = root.canonicalize().ok()?;
    let real_file = file.canonicalize().ok()?;
    // A link inside the root may still lead to a dotfile there.
    let inside = real_file.strip_prefix(&real_root).ok()?;
    let hidden = inside
        .components()
        .any(|part| part.as_os_str().as_encoded_bytes().starts_with(b"."));
    (!hidden && real_file.is_file()).then_some(real_file)
}

/// What a `Range` header asks of a file of `len` bytes (RFC 9110 section 14).
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Ignore the header: another unit, a malformed or multi-range request (a server may
    /// always answer those with the whole file).
    Whole,
    /// One range, inclusive, clamped to the file.
    Part(u64, u64),
    Unsatisfiable,
}

fn byte_range(header: &str, len: u64) -> RangeAnswer {
    let Some((unit, spec)) = header.split_once('=') else {
        return RangeAnswer::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            None => RangeAnswer::Whole,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(suffix) => RangeAnswer::Part(len - suffix.min(len), len - 1),
        },
        (first, last) => {
            let Some(start) = number(first) else {
                return RangeAnswer::Whole;
            };
            let end = match last {
                "" => u64::MAX,
                last => match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeAnswer::Whole,
                },
            };
            if start >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, end.min(len - 1))
            }
        }
    }
}

pub(crate) fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("mpd") => "application/dash+xml",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(byte_range("bytes=0-1572", 68092), Part(0, 1572));
        assert_eq!(byte_range("bytes=1573-", 68092), Part(1573, 68091));
        assert_eq!(byte_range("bytes=-100", 68092), Part(67992, 68091));
        assert_eq!(byte_range("bytes=0-999999", 100), Part(0, 99));
        assert_eq!(byte_range("Bytes=1-2", 100), Part(1, 2));
        assert_eq!(byte_range("bytes=200-300", 100), Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 100), Unsatisfiable);
        // Ignored, so the whole file is answered with 200.
        assert_eq!(byte_range("bytes=5-1", 100), Whole);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(byte_range("items=0-1", 100), Whole);
        assert_eq!(byte_range("bytes=a-b", 100), Whole);
        assert_eq!(byte_range("bytes=+1-2", 100), Whole);
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
        assert!(resolve(&root, "").unwrap().ends_with("index.html"));
        assert!(resolve(&root, "media/manifest.mpd").is_some());
        assert!(resolve(&root, "../../Cargo.toml").is_none());
        assert!(resolve(&root, "media/../../../Cargo.toml").is_none());
        assert!(resolve(&root, "/etc/passwd").is_none());
        assert!(resolve(&root, "missing.html").is_none());
    }

    #[test]
    fn dotfiles_and_symlinks_out_of_the_root_are_not_served() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("index.html"), b"<html>").unwrap();
        std::fs::write(root.path().join(".env"), b"KEY=1").unwrap();
        std::fs::create_dir(root.path().join("media")).unwrap();
        std::fs::write(root.path().join("media/a.mp4"), b"mp4").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.path().join("leak"))
            .unwrap();
        std::os::unix::fs::symlink(root.path().join("media/a.mp4"), root.path().join("inside"))
            .unwrap();
        std::os::unix::fs::symlink(root.path().join(".env"), root.path().join("env.txt")).unwrap();
        assert!(resolve(root.path(), ".env").is_none());
        assert!(resolve(root.path(), "env.txt").is_none());
        assert!(resolve(root.path(), "leak").is_none());
        assert!(resolve(root.path(), "inside").is_some());
        assert!(resolve(root.path(), "media/a.mp4").is_some());
    }

    #[tokio::test]
    async fn partial_content_carries_its_range() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, "bytes=0-7".parse().unwrap());
        let response = serve(&root, "/demo/media/video_cenc.mp4", &headers)
            .await
            .unwrap();
        assert_eq!(response.status(), 206);
        assert_eq!(response.body().len(), 8);
        assert_eq!(&response.body()[4..8], b"ftyp");
        assert_eq!(response.headers()[header::CONTENT_RANGE], "bytes 0-7/68092");
        headers.insert(header::RANGE, "lines=0-7".parse().unwrap());
        let whole = serve(&root, "/demo/media/video_cenc.mp4", &headers)
            .await
            .unwrap();
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.body().len(), 68092);
    }
}
